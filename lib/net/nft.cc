#include "lib/net/nft.h"

#include <nftables/libnftables.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"

namespace fcvm::net {
namespace {

ABSL_CONST_INIT absl::Mutex nft_mu(absl::kConstInit);

struct CtxFree {
  void operator()(nft_ctx* c) const { nft_ctx_free(c); }
};

}  // namespace

absl::StatusOr<std::string> RunNft(const std::string& commands, const std::string& what) {
  absl::MutexLock lock(&nft_mu);
  std::unique_ptr<nft_ctx, CtxFree> ctx(nft_ctx_new(NFT_CTX_DEFAULT));
  if (!ctx) return absl::ResourceExhaustedError(absl::StrCat(what, ": nft_ctx_new failed"));
  if (nft_ctx_buffer_output(ctx.get()) != 0 || nft_ctx_buffer_error(ctx.get()) != 0) {
    return absl::InternalError(absl::StrCat(what, ": cannot buffer nft output"));
  }
  int rc = nft_run_cmd_from_buffer(ctx.get(), commands.c_str());
  std::string out = nft_ctx_get_output_buffer(ctx.get());
  if (rc != 0) {
    std::string err = nft_ctx_get_error_buffer(ctx.get());
    return absl::InternalError(absl::StrCat(what, ": nft: ", absl::StripTrailingAsciiWhitespace(err)));
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> ListNftTables(const std::string& family) {
  absl::StatusOr<std::string> out = RunNft(absl::StrCat("list tables ", family), "list nft tables");
  if (!out.ok()) return out.status();
  std::vector<std::string> names;
  const std::string prefix = absl::StrCat("table ", family, " ");
  for (absl::string_view line : absl::StrSplit(*out, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (absl::ConsumePrefix(&line, prefix)) names.emplace_back(line);
  }
  return names;
}

absl::Status DeleteNftTable(const std::string& family, const std::string& name) {
  return RunNft(absl::StrCat("add table ", family, " ", name, "\ndelete table ", family, " ", name, "\n"),
                absl::StrCat("delete nft table ", family, " ", name))
      .status();
}

}  // namespace fcvm::net
