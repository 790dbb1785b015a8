#include "lib/uffd/handshake.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::uffd {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;

constexpr uint64_t kFile = 64ull << 20;

absl::StatusOr<Handshake> Parse(const std::string& json, size_t fds = 1, bool ctrunc = false) {
  return ParseHandshake({json, fds, ctrunc, false}, kFile);
}

void ExpectBad(const std::string& json, const std::string& why, size_t fds = 1) {
  EXPECT_THAT(Parse(json, fds), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(why))) << json;
}

TEST(HandshakeParserTest, FirecrackerMessage) {
  // Byte for byte what Firecracker v1.14.2 sent (file size adapted).
  ASSERT_OK_AND_ASSIGN(
      Handshake h,
      Parse(
          R"([{"base_host_virt_addr":140027082309632,"size":67108864,"offset":0,"page_size":4096,"page_size_kib":4096}])"));
  ASSERT_EQ(h.regions.size(), 1u);
  EXPECT_EQ(h.regions[0].base_host_virt_addr, 140027082309632u);
  EXPECT_EQ(h.regions[0].size, 67108864u);
  EXPECT_EQ(h.regions[0].offset, 0u);
  EXPECT_EQ(h.page_size, 4096u);
}

TEST(HandshakeParserTest, OldFirecrackerSendsOnlyPageSizeKibInBytes) {
  ASSERT_OK_AND_ASSIGN(
      Handshake h, Parse(R"([{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size_kib":4096}])"));
  EXPECT_EQ(h.page_size, 4096u);
}

TEST(HandshakeParserTest, PageSizeWinsOverPageSizeKib) {
  ASSERT_OK_AND_ASSIGN(
      Handshake h,
      Parse(R"([{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096,"page_size_kib":4}])"));
  EXPECT_EQ(h.page_size, 4096u);
}

TEST(HandshakeParserTest, UnknownFieldsIgnoredAndRegionsSortedByAddress) {
  ASSERT_OK_AND_ASSIGN(
      Handshake h,
      Parse(
          R"([{"base_host_virt_addr":1073741824,"size":4096,"offset":4096,"page_size":4096,"gpa_start":0,"is_guest_memfd":false},
               {"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}])"));
  ASSERT_EQ(h.regions.size(), 2u);
  EXPECT_EQ(h.regions[0].base_host_virt_addr, 4096u);
  EXPECT_EQ(h.regions[1].offset, 4096u);
}

TEST(HandshakeParserTest, HugePages) {
  ASSERT_OK_AND_ASSIGN(
      Handshake h,
      Parse(R"([{"base_host_virt_addr":2097152,"size":4194304,"offset":0,"page_size":2097152}])"));
  EXPECT_EQ(h.page_size, 2097152u);
}

TEST(HandshakeParserTest, Rejections) {
  ExpectBad("nope", "not valid JSON");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}] x)", "not valid JSON");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096})", "not valid JSON");
  ExpectBad(R"({"a":1})", "expected a JSON array, got object");
  ExpectBad("[]", "empty region array");
  ExpectBad("[1]", "region 0 is a number");
  ExpectBad(R"([{"size":4096,"offset":0,"page_size":4096}])", "missing field \"base_host_virt_addr\"");
  ExpectBad(R"([{"base_host_virt_addr":4096,"offset":0,"page_size":4096}])", "missing field \"size\"");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":4096,"page_size":4096}])", "missing field \"offset\"");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":4096,"offset":0}])", "missing field \"page_size\"");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":-1,"offset":0,"page_size":4096}])",
            "not an unsigned integer");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":1e3,"offset":0,"page_size":4096}])",
            "not an unsigned integer");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":"4096","offset":0,"page_size":4096}])",
            "not an unsigned integer");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":99999999999999999999999,"offset":0,"page_size":4096}])",
            "not an unsigned integer");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":0,"offset":0,"page_size":4096}])", "size is 0");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":4097,"offset":0,"page_size":4096}])",
            "not a multiple of the page size");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":4096,"offset":100,"page_size":4096}])",
            "offset 100 is not a multiple");
  ExpectBad(R"([{"base_host_virt_addr":4097,"size":4096,"offset":0,"page_size":4096}])", "not page-aligned");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":12288,"offset":0,"page_size":6144}])",
            "not a power of two");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":1024}])",
            "not a power of two >= 4096");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":8192,"offset":67104768,"page_size":4096}])",
            "past the end");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":4096,"offset":18446744073709547520,"page_size":4096}])",
            "past the end");
  ExpectBad(R"([{"base_host_virt_addr":18446744073709547520,"size":8192,"offset":0,"page_size":4096}])",
            "overflows");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096},
                {"base_host_virt_addr":1048576,"size":4096,"offset":4096,"page_size":4096}])",
            "overlap in the memory file");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096},
                {"base_host_virt_addr":8192,"size":4096,"offset":8192,"page_size":4096}])",
            "overlap in the address space");
  ExpectBad(R"([{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096},
                {"base_host_virt_addr":2097152,"size":2097152,"offset":2097152,"page_size":2097152}])",
            "differs from region 0");
}

// The message is one JSON array and nothing else. JSON's own whitespace
// (space, tab, LF, CR) may surround it, as the JSON grammar and Firecracker's
// reference handler (serde_json::from_str) allow; any other byte before or
// after it is refused. nlohmann's parser alone treats a NUL byte as the end of
// its input, so "[...]\0anything" used to be accepted.
TEST(HandshakeParserTest, NothingButWhitespaceAroundTheArray) {
  const std::string ok = R"([{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}])";
  for (const std::string& ws :
       {std::string(" "), std::string("\n"), std::string("\r\n"), std::string("\t \n")}) {
    EXPECT_OK(Parse(ok + ws)) << "trailing whitespace is JSON";
    EXPECT_OK(Parse(ws + ok)) << "leading whitespace is JSON";
  }
  ExpectBad(ok + std::string(1, '\0'), "after the JSON array");
  ExpectBad(ok + std::string("\0garbage", 8), "after the JSON array");
  ExpectBad(ok + std::string("\0", 1) + ok, "after the JSON array");
  ExpectBad(ok + std::string(" \0", 2), "after the JSON array");
  ExpectBad(ok + "\f", "not valid JSON");  // form feed is not JSON whitespace
  ExpectBad(ok + "\v", "not valid JSON");
  ExpectBad(ok + ok, "not valid JSON");
  ExpectBad(ok + "]", "not valid JSON");
  ExpectBad("\xEF\xBB\xBF" + ok, "byte-order mark");  // serde_json refuses it too
  ExpectBad(std::string("\0", 1) + ok, "NUL byte");
}

TEST(HandshakeParserTest, FdRules) {
  const std::string ok = R"([{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}])";
  ExpectBad(ok, "no file descriptor", 0);
  ExpectBad(ok, "2 file descriptors", 2);
  EXPECT_THAT(Parse(ok, 1, /*ctrunc=*/true),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("MSG_CTRUNC")));
  EXPECT_THAT(ParseHandshake({ok, 1, false, /*filled_buffer=*/true}, kFile),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("too large")));
  EXPECT_THAT(ParseHandshake({"", 1, false, false}, kFile), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(WholePagesInTest, OnlyPagesWhollyInsideTheRange) {
  constexpr uint64_t kH = 2 << 20;
  // Whole huge pages.
  EXPECT_EQ(WholePagesIn(4 * kH, 7 * kH, kH).begin, 4 * kH);
  EXPECT_EQ(WholePagesIn(4 * kH, 7 * kH, kH).end, 7 * kH);
  // 4 KiB at the start of a huge page (a 4 KiB balloon on a hugetlbfs
  // guest): nothing is gone.
  EXPECT_TRUE(WholePagesIn(4 * kH, 4 * kH + 4096, kH).empty());
  // An unaligned start: the page it starts in stays.
  AddressRange r = WholePagesIn(4 * kH + 4096, 7 * kH + 8192, kH);
  EXPECT_EQ(r.begin, 5 * kH);
  EXPECT_EQ(r.end, 7 * kH);
  EXPECT_TRUE(WholePagesIn(4 * kH + 4096, 5 * kH - 4096, kH).empty());
  // 4 KiB pages: an aligned range is kept as is.
  EXPECT_EQ(WholePagesIn(8192, 20480, 4096).begin, 8192u);
  EXPECT_EQ(WholePagesIn(8192, 20480, 4096).end, 20480u);
  EXPECT_TRUE(WholePagesIn(5, 5, 4096).empty());
  EXPECT_TRUE(WholePagesIn(~0ull - 10, ~0ull, 4096).empty()) << "no overflow";
}

TEST(HandshakeParserTest, CheckIsUserfaultfd) {
  int efd = eventfd(0, EFD_CLOEXEC);
  ASSERT_GE(efd, 0);
  EXPECT_THAT(CheckIsUserfaultfd(efd), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("[eventfd]")));
  close(efd);
  int dn = open("/dev/null", O_RDONLY | O_CLOEXEC);
  EXPECT_THAT(CheckIsUserfaultfd(dn), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("/dev/null")));
  close(dn);
  EXPECT_FALSE(CheckIsUserfaultfd(-1).ok());
}

}  // namespace
}  // namespace fcvm::uffd
