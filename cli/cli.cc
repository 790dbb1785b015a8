#include "cli/cli.h"

#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "fcvm/v1/snapshot.grpc.pb.h"
#include "fcvm/v1/system.grpc.pb.h"
#include "fcvm/v1/vm.grpc.pb.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/grpcpp.h"
#include "lib/base/flags.h"

#ifndef FCVM_VERSION
#define FCVM_VERSION "0.0.0"
#endif

namespace fcvm::cli {
namespace {

constexpr char kDefaultSocket[] = "/run/fcvm/fcvmd.sock";

struct GlobalOptions {
  std::string socket = kDefaultSocket;
  bool json = false;
  absl::Duration timeout = absl::Seconds(30);
};

void AddGlobalFlags(FlagParser& flags, GlobalOptions* g) {
  flags.String("socket", &g->socket, "fcvmd's socket (env FCVM_SOCKET; default /run/fcvm/fcvmd.sock)",
               "PATH");
  flags.Bool("json", &g->json, "print JSON instead of a table");
  flags.Duration("timeout", &g->timeout, "deadline of each call (default 30s)");
}

// One line that says what is wrong and what to do about it.
std::string DescribeUnreachable(const std::string& socket, const grpc::Status& status) {
  std::string why;
  struct stat st;
  if (lstat(socket.c_str(), &st) < 0) {
    why = std::strerror(errno);
  } else if (!S_ISSOCK(st.st_mode)) {
    why = "not a socket";
  } else {
    why = status.error_message();
  }
  return absl::StrCat("cannot reach fcvmd at ", socket, " (", why,
                      "); start it with 'systemctl start fcvmd' or 'fcvmd --socket ", socket,
                      "', or point --socket / FCVM_SOCKET at a running fcvmd");
}

class Client {
 public:
  Client(const GlobalOptions& g, std::ostream& out, std::ostream& err)
      : g_(g),
        out_(out),
        err_(err),
        channel_(grpc::CreateChannel(absl::StrCat("unix:", g.socket), grpc::InsecureChannelCredentials())) {}

  template <typename Stub>
  std::unique_ptr<typename Stub::Stub> MakeStub() {
    return Stub::NewStub(channel_);
  }

  void Prepare(grpc::ClientContext* ctx) const {
    ctx->set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(g_.timeout));
  }

  // Prints the error of a failed call; returns the exit code.
  int Fail(const grpc::Status& status) const {
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
      err_ << "fcvmctl: " << DescribeUnreachable(g_.socket, status) << "\n";
    } else {
      err_ << "fcvmctl: " << StatusCodeName(status.error_code()) << ": " << status.error_message() << "\n";
    }
    return 1;
  }

  int PrintJson(const google::protobuf::Message& message) const {
    std::string json;
    google::protobuf::util::JsonPrintOptions opts;
    opts.add_whitespace = true;
    opts.preserve_proto_field_names = true;
    opts.always_print_primitive_fields = true;
    (void)google::protobuf::util::MessageToJsonString(message, &json, opts);
    out_ << json;
    if (json.empty() || json.back() != '\n') out_ << "\n";
    return 0;
  }

  const GlobalOptions& g() const { return g_; }
  std::ostream& out() const { return out_; }

 private:
  static std::string StatusCodeName(grpc::StatusCode code) {
    switch (code) {
      case grpc::StatusCode::INVALID_ARGUMENT:
        return "invalid argument";
      case grpc::StatusCode::NOT_FOUND:
        return "not found";
      case grpc::StatusCode::ALREADY_EXISTS:
        return "already exists";
      case grpc::StatusCode::FAILED_PRECONDITION:
        return "failed precondition";
      case grpc::StatusCode::RESOURCE_EXHAUSTED:
        return "resource exhausted";
      case grpc::StatusCode::DEADLINE_EXCEEDED:
        return "deadline exceeded";
      case grpc::StatusCode::UNIMPLEMENTED:
        return "not implemented by this fcvmd";
      case grpc::StatusCode::PERMISSION_DENIED:
        return "permission denied";
      case grpc::StatusCode::CANCELLED:
        return "cancelled";
      default:
        return absl::StrCat("error ", static_cast<int>(code));
    }
  }

  const GlobalOptions& g_;
  std::ostream& out_;
  std::ostream& err_;
  std::shared_ptr<grpc::Channel> channel_;
};

std::string StateName(fcvm::v1::VmState state) {
  std::string name = fcvm::v1::VmState_Name(state);
  const std::string prefix = "VM_STATE_";
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

std::string Age(const google::protobuf::Timestamp& ts) {
  if (ts.seconds() == 0) return "-";
  absl::Duration d = absl::Now() - absl::FromUnixSeconds(ts.seconds());
  if (d < absl::Minutes(1)) return absl::StrCat(absl::ToInt64Seconds(d), "s");
  if (d < absl::Hours(1)) return absl::StrCat(absl::ToInt64Minutes(d), "m");
  if (d < absl::Hours(48)) return absl::StrCat(absl::ToInt64Hours(d), "h");
  return absl::StrCat(absl::ToInt64Hours(d) / 24, "d");
}

int CmdVersion(Client& client, const std::vector<std::string>& args) {
  if (!args.empty()) return -1;
  auto stub = client.MakeStub<fcvm::v1::SystemService>();
  grpc::ClientContext ctx;
  client.Prepare(&ctx);
  fcvm::v1::GetVersionRequest req;
  fcvm::v1::GetVersionResponse resp;
  grpc::Status st = stub->GetVersion(&ctx, req, &resp);
  if (client.g().json) {
    if (!st.ok()) return client.Fail(st);
    std::string json;
    google::protobuf::util::JsonPrintOptions opts;
    opts.preserve_proto_field_names = true;
    opts.always_print_primitive_fields = true;
    (void)google::protobuf::util::MessageToJsonString(resp, &json, opts);
    client.out() << "{\"client_version\": \"" << FCVM_VERSION << "\", \"daemon\": " << json << "}\n";
    return 0;
  }
  client.out() << "fcvmctl " << FCVM_VERSION << "\n";
  if (!st.ok()) return client.Fail(st);
  client.out() << "fcvmd " << resp.version() << " (api " << resp.api_version() << ")\n";
  if (resp.firecracker_path().empty()) {
    client.out() << "firecracker: not configured\n";
  } else {
    client.out() << "firecracker " << (resp.firecracker_version().empty() ? "?" : resp.firecracker_version())
                 << " (" << resp.firecracker_path() << ")\n";
  }
  return 0;
}

int CmdLs(Client& client, const std::vector<std::string>& args) {
  if (!args.empty()) return -1;
  auto stub = client.MakeStub<fcvm::v1::VmService>();
  grpc::ClientContext ctx;
  client.Prepare(&ctx);
  fcvm::v1::ListVmsRequest req;
  fcvm::v1::ListVmsResponse resp;
  grpc::Status st = stub->ListVms(&ctx, req, &resp);
  if (!st.ok()) return client.Fail(st);
  if (client.g().json) return client.PrintJson(resp);
  client.out() << absl::StrFormat("%-16s %-24s %-9s %-8s %-18s %-8s %s\n", "ID", "NAME", "STATE", "BACKEND",
                                  "SNAPSHOT", "PID", "AGE");
  for (const fcvm::v1::Vm& vm : resp.vms()) {
    std::string backend = vm.snapshot_id().empty()                               ? "-"
                          : vm.memory_backend() == fcvm::v1::MEMORY_BACKEND_FILE ? "file"
                                                                                 : "uffd";
    client.out() << absl::StrFormat("%-16s %-24s %-9s %-8s %-18s %-8s %s\n", vm.id(), vm.name(),
                                    StateName(vm.state()), backend,
                                    vm.snapshot_id().empty() ? "-" : vm.snapshot_id(),
                                    vm.pid() > 0 ? absl::StrCat(vm.pid()) : "-", Age(vm.created_at()));
  }
  return 0;
}

struct Command {
  const char* name;
  const char* usage;
  const char* summary;
  std::function<int(Client&, const std::vector<std::string>&)> run;
};

const std::vector<Command>& Commands() {
  static const std::vector<Command> kCommands = {
      {"version", "version", "print fcvmctl's, fcvmd's and Firecracker's versions", CmdVersion},
      {"ls", "ls", "list VMs", CmdLs},
  };
  return kCommands;
}

std::string TopHelp() {
  FlagParser flags("fcvmctl [options] <command> [command options]");
  GlobalOptions g;
  AddGlobalFlags(flags, &g);
  std::string out = flags.Help();
  out += "\ncommands:\n";
  for (const Command& c : Commands()) out += absl::StrFormat("  %-10s %s\n", c.name, c.summary);
  out += "\n'fcvmctl <command> --help' shows a command's options.\n";
  return out;
}

}  // namespace

int RunCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  GlobalOptions g;
  if (const char* env = std::getenv("FCVM_SOCKET"); env != nullptr && *env != '\0') g.socket = env;
  FlagParser global("fcvmctl [options] <command>");
  AddGlobalFlags(global, &g);
  absl::StatusOr<std::vector<std::string>> rest = global.Parse(args, /*stop_at_positional=*/true);
  if (!rest.ok()) {
    err << "fcvmctl: " << rest.status().message() << "\n";
    return 2;
  }
  if (rest->empty()) {
    (global.help_requested() ? out : err) << TopHelp();
    return global.help_requested() ? 0 : 2;
  }
  const std::string name = (*rest)[0];
  const Command* command = nullptr;
  for (const Command& c : Commands()) {
    if (name == c.name) command = &c;
  }
  if (command == nullptr) {
    err << "fcvmctl: unknown command '" << name << "'\n\n" << TopHelp();
    return 2;
  }
  FlagParser flags(absl::StrCat("fcvmctl [options] ", command->usage, "\n\n", command->summary));
  AddGlobalFlags(flags, &g);
  absl::StatusOr<std::vector<std::string>> positional =
      flags.Parse(std::vector<std::string>(rest->begin() + 1, rest->end()));
  if (!positional.ok()) {
    err << "fcvmctl " << name << ": " << positional.status().message() << "\n";
    return 2;
  }
  if (flags.help_requested() || global.help_requested()) {
    out << flags.Help();
    return 0;
  }
  Client client(g, out, err);
  int code = command->run(client, *positional);
  if (code < 0) {
    err << "fcvmctl " << name << ": unexpected arguments\n\n" << flags.Help();
    return 2;
  }
  return code;
}

}  // namespace fcvm::cli
