#include "cli/cli.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/format.h"
#include "cli/progress.h"
#include "cli/requests.h"
#include "cli/top.h"
#include "cli/vsock.h"
#include "fcvm/v1/snapshot.grpc.pb.h"
#include "fcvm/v1/system.grpc.pb.h"
#include "fcvm/v1/vm.grpc.pb.h"
#include "fcvm/v1/wire.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "lib/base/flags.h"

#ifndef FCVM_VERSION
#define FCVM_VERSION "0.0.0"
#endif

namespace fcvm::cli {
namespace {

namespace v1 = ::fcvm::v1;

constexpr char kDefaultSocket[] = "/run/fcvm/fcvmd.sock";

struct GlobalOptions {
  std::string socket = kDefaultSocket;
  bool json = false;
  bool progress = false;
  // Empty: the command's default deadline.
  std::string timeout;
};

void AddGlobalFlags(FlagParser& flags, GlobalOptions* g) {
  flags.String("socket", &g->socket, "fcvmd's socket (env FCVM_SOCKET; default /run/fcvm/fcvmd.sock)",
               "PATH");
  flags.Bool("json", &g->json, "print JSON instead of a table");
  flags.Bool("progress", &g->progress,
             "show progress of long calls on stderr even when it is not a terminal");
  flags.String(
      "timeout", &g->timeout,
      "deadline of each call, 'inf' for none (default 30s; longer for run, rm, snapshot create, clone "
      "and fork; none for watch)",
      "DURATION");
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

std::string StatusCodeName(grpc::StatusCode code) {
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
      return "deadline exceeded (see --timeout)";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "not implemented by this fcvmd";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "permission denied";
    case grpc::StatusCode::CANCELLED:
      return "cancelled";
    case grpc::StatusCode::INTERNAL:
      return "internal error in fcvmd";
    case grpc::StatusCode::UNAVAILABLE:
      return "unavailable in fcvmd";
    case grpc::StatusCode::ABORTED:
      return "aborted";
    default:
      return absl::StrCat("error ", static_cast<int>(code));
  }
}

// The constant name, for JSON ("NOT_FOUND").
std::string StatusCodeConstant(grpc::StatusCode code) {
  static constexpr const char* kNames[] = {
      "OK",        "CANCELLED",       "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS",  "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",   "OUT_OF_RANGE",    "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
      "DATA_LOSS", "UNAUTHENTICATED",
  };
  const int i = static_cast<int>(code);
  return i >= 0 && i < static_cast<int>(std::size(kNames)) ? kNames[i] : absl::StrCat("CODE_", i);
}

// "<why>" of a failed call on one line: "<code>: <message>".
std::string Describe(const grpc::Status& status) {
  std::string message = absl::StrReplaceAll(status.error_message(), {{"\r", " "}, {"\n", " "}});
  std::string out = StatusCodeName(status.error_code());
  if (!message.empty()) absl::StrAppend(&out, ": ", message);
  return out;
}

// Message sizes as fcvmd's (fcvm/v1/wire.h): the largest answer is a clone
// of 1,024 VMs.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& socket) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(v1::kMaxResponseBytes);
  args.SetMaxSendMessageSize(v1::kMaxRequestBytes);
  return grpc::CreateCustomChannel(absl::StrCat("unix:", socket), grpc::InsecureChannelCredentials(), args);
}

class Client {
 public:
  Client(const GlobalOptions& g, absl::Duration deadline, std::ostream& out, std::ostream& err)
      : g_(g), deadline_(deadline), out_(out), err_(err), channel_(MakeChannel(g.socket)) {}

  template <typename Service>
  std::unique_ptr<typename Service::Stub> MakeStub() {
    return Service::NewStub(channel_);
  }

  void Prepare(grpc::ClientContext* ctx) const {
    if (deadline_ != absl::InfiniteDuration()) {
      ctx->set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(deadline_));
    }
  }

  // Prints the error of a failed call as one line, "fcvmctl: <what>: <why>";
  // returns the exit code. `ctx` is the call's context (its trailing metadata
  // tells an answer of fcvmd's own).
  int Fail(const grpc::Status& status, const std::string& what, const grpc::ClientContext& ctx) const {
    if (Unreachable(status, ctx)) {
      err_ << "fcvmctl: " << DescribeUnreachable(g_.socket, status) << "\n";
    } else {
      err_ << "fcvmctl: " << (what.empty() ? "" : what + ": ") << Describe(status) << "\n";
    }
    return 1;
  }

  // True when the call failed because fcvmd could not be reached, as opposed
  // to fcvmd answering UNAVAILABLE itself (shutting down, a dependency of its
  // down): fcvmd marks every answer of its own with trailing metadata.
  bool Unreachable(const grpc::Status& status, const grpc::ClientContext& ctx) const {
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) return false;
    const auto& trailers = ctx.GetServerTrailingMetadata();
    return trailers.find(v1::kServedByKey) == trailers.end();
  }

  int PrintJson(const google::protobuf::Message& message, bool pretty = true) const {
    out_ << ToJson(message, pretty);
    return 0;
  }

  const GlobalOptions& g() const { return g_; }
  std::ostream& out() const { return out_; }
  std::ostream& err() const { return err_; }

 private:
  const GlobalOptions& g_;
  const absl::Duration deadline_;
  std::ostream& out_;
  std::ostream& err_;
  std::shared_ptr<grpc::Channel> channel_;
};

// Runs `on_interrupt` (on its own thread) when SIGINT or SIGTERM arrives while
// this object lives; restores the previous handlers when it dies. One at a time.
class InterruptGuard {
 public:
  explicit InterruptGuard(std::function<void()> on_interrupt) {
    if (pipe2(fds_, O_CLOEXEC | O_NONBLOCK) < 0) return;  // then Ctrl-C just kills us
    write_fd_.store(fds_[1]);
    struct sigaction sa {};
    sa.sa_handler = &InterruptGuard::Handler;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
    thread_ = std::thread([this, fn = std::move(on_interrupt)] {
      struct pollfd p = {fds_[0], POLLIN, 0};
      while (poll(&p, 1, -1) < 0 && errno == EINTR) {
      }
      char c = 0;
      if (read(fds_[0], &c, 1) == 1 && c == kInterrupted) {
        interrupted_ = true;
        fn();
      }
    });
  }

  ~InterruptGuard() {
    if (!thread_.joinable()) return;
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
    write_fd_.store(-1);
    const char stop = 0;
    (void)!write(fds_[1], &stop, 1);
    thread_.join();
    close(fds_[0]);
    close(fds_[1]);
  }

  bool interrupted() const { return interrupted_; }

 private:
  static constexpr char kInterrupted = 1;
  static void Handler(int) {
    const int fd = write_fd_.load();
    if (fd >= 0) (void)!write(fd, &kInterrupted, 1);
  }

  static inline std::atomic<int> write_fd_{-1};
  int fds_[2] = {-1, -1};
  struct sigaction old_int_ {};
  struct sigaction old_term_ {};
  std::atomic<bool> interrupted_{false};
  std::thread thread_;
};

struct Command;

// What a command runs with.
struct Env {
  const Command& command;
  GlobalOptions& g;
  FlagParser& flags;
  std::ostream& out;
  std::ostream& err;
  bool stderr_tty;
  bool stdout_tty;
};

struct Command {
  const char* name;
  const char* usage;
  const char* summary;
  absl::Duration default_timeout;
  int (*run)(Env&, const Args&);
};

int UsageError(Env& env, absl::string_view message);

// After a command's arguments are parsed: prints usage errors and help, and
// builds the client. Returns the exit code when the command must stop there.
std::optional<int> Start(Env& env, const absl::Status& parsed, std::optional<Client>* client) {
  if (!parsed.ok()) return UsageError(env, parsed.message());
  if (env.flags.help_requested()) {
    env.out << env.flags.Help();
    return 0;
  }
  absl::Duration deadline = env.command.default_timeout;
  if (!env.g.timeout.empty()) {
    if (!absl::ParseDuration(env.g.timeout, &deadline) || deadline <= absl::ZeroDuration()) {
      return UsageError(env, absl::StrCat("--timeout: not a positive duration: '", env.g.timeout,
                                          "' (e.g. 500ms, 5s, 2m, inf)"));
    }
  }
  client->emplace(env.g, deadline, env.out, env.err);
  return std::nullopt;
}

int UsageError(Env& env, absl::string_view message) {
  env.err << "fcvmctl: " << env.command.name << ": " << message << "\n";
  return 2;
}

std::unique_ptr<Progress> MaybeProgress(const Env& env, std::string what) {
  if (!env.stderr_tty && !env.g.progress) return nullptr;
  return std::make_unique<Progress>(env.err, std::move(what), env.stderr_tty);
}

int CmdVersion(Env& env, const Args& args) {
  absl::StatusOr<v1::GetVersionRequest> req = ParseGetVersion(env.flags, args);
  std::optional<Client> client;
  if (auto code = Start(env, req.status(), &client)) return *code;
  auto stub = client->MakeStub<v1::SystemService>();
  grpc::ClientContext ctx;
  client->Prepare(&ctx);
  v1::GetVersionResponse resp;
  grpc::Status st = stub->GetVersion(&ctx, *req, &resp);
  if (env.g.json) {
    if (!st.ok()) return client->Fail(st, "version", ctx);
    std::string daemon = ToJson(resp, /*pretty=*/false);
    daemon.pop_back();  // the newline
    env.out << "{\"client_version\": \"" << FCVM_VERSION << "\", \"daemon\": " << daemon << "}\n";
    return 0;
  }
  env.out << "fcvmctl " << FCVM_VERSION << "\n";
  if (!st.ok()) return client->Fail(st, "version", ctx);
  env.out << "fcvmd " << resp.version() << " (api " << resp.api_version() << ")\n";
  env.out << "isolation: " << (resp.isolation().empty() ? "?" : resp.isolation()) << "\n";
  if (resp.firecracker_path().empty()) {
    env.out << "firecracker: not configured\n";
  } else {
    env.out << "firecracker " << (resp.firecracker_version().empty() ? "?" : resp.firecracker_version())
            << " (" << resp.firecracker_path() << ")\n";
  }
  return 0;
}

// The shape of most commands: parse, one unary call, print the answer as
// JSON or with `format`.
template <typename Service, typename Req, typename Resp>
int Unary(Env& env, const Args& args, absl::StatusOr<Req> (*parse)(FlagParser&, const Args&),
          grpc::Status (Service::Stub::*call)(grpc::ClientContext*, const Req&, Resp*),
          const std::type_identity_t<std::function<std::string(const Req&)>>& what,
          const std::type_identity_t<std::function<std::string(const Resp&)>>& format,
          const std::type_identity_t<std::function<std::string(const Req&)>>& progress = nullptr) {
  absl::StatusOr<Req> req = parse(env.flags, args);
  std::optional<Client> client;
  if (auto code = Start(env, req.status(), &client)) return *code;
  auto stub = client->MakeStub<Service>();
  grpc::ClientContext ctx;
  client->Prepare(&ctx);
  Resp resp;
  grpc::Status st;
  {
    std::unique_ptr<Progress> p = progress ? MaybeProgress(env, progress(*req)) : nullptr;
    st = ((*stub).*call)(&ctx, *req, &resp);
  }
  if (!st.ok()) return client->Fail(st, what(*req), ctx);
  if (env.g.json) return client->PrintJson(resp);
  env.out << format(resp);
  return 0;
}

// A listing: every page of it (fcvmd pages its answers; see vm.proto),
// merged into one answer, then printed like Unary's.
template <typename Service, typename Req, typename Resp>
int Listing(Env& env, const Args& args, absl::StatusOr<Req> (*parse)(FlagParser&, const Args&),
            grpc::Status (Service::Stub::*call)(grpc::ClientContext*, const Req&, Resp*),
            const std::string& what,
            const std::type_identity_t<std::function<std::string(const Resp&)>>& format) {
  absl::StatusOr<Req> req = parse(env.flags, args);
  std::optional<Client> client;
  if (auto code = Start(env, req.status(), &client)) return *code;
  auto stub = client->MakeStub<Service>();
  Resp all;
  while (true) {
    grpc::ClientContext ctx;
    client->Prepare(&ctx);
    Resp page;
    grpc::Status st = ((*stub).*call)(&ctx, *req, &page);
    if (!st.ok()) return client->Fail(st, what, ctx);
    std::string next = page.next_page_token();
    page.clear_next_page_token();
    all.MergeFrom(page);
    if (next.empty()) break;
    req->set_page_token(next);
  }
  if (env.g.json) return client->PrintJson(all);
  env.out << format(all);
  return 0;
}

int CmdRun(Env& env, const Args& args) {
  return Unary<v1::VmService>(
      env, args, ParseRunVm, &v1::VmService::Stub::RunVm,
      [](const v1::RunVmRequest& r) { return r.name().empty() ? std::string("run") : "run " + r.name(); },
      [](const v1::Vm& vm) { return FormatVmSummary(vm); },
      [](const v1::RunVmRequest& r) {
        return absl::StrCat("booting ", r.name().empty() ? "a VM" : r.name());
      });
}

int CmdGet(Env& env, const Args& args) {
  return Unary<v1::VmService>(
      env, args, ParseGetVm, &v1::VmService::Stub::GetVm,
      [](const v1::GetVmRequest& r) { return "get " + r.ref(); },
      [](const v1::Vm& vm) { return FormatVmDetails(vm, absl::Now()); });
}

int CmdLs(Env& env, const Args& args) {
  return Listing<v1::VmService>(env, args, ParseListVms, &v1::VmService::Stub::ListVms, "ls",
                                [](const v1::ListVmsResponse& r) { return FormatVmTable(r, absl::Now()); });
}

int CmdPause(Env& env, const Args& args) {
  return Unary<v1::VmService>(
      env, args, ParsePauseVm, &v1::VmService::Stub::PauseVm,
      [](const v1::PauseVmRequest& r) { return "pause " + r.ref(); },
      [](const v1::Vm& vm) { return FormatVmSummary(vm); });
}

int CmdResume(Env& env, const Args& args) {
  return Unary<v1::VmService>(
      env, args, ParseResumeVm, &v1::VmService::Stub::ResumeVm,
      [](const v1::ResumeVmRequest& r) { return "resume " + r.ref(); },
      [](const v1::Vm& vm) { return FormatVmSummary(vm); });
}

// rm deletes each VM in turn and reports each; one failure does not stop the
// others, except an unreachable fcvmd.
int CmdRm(Env& env, const Args& args) {
  absl::StatusOr<std::vector<v1::DeleteVmRequest>> reqs = ParseDeleteVms(env.flags, args);
  std::optional<Client> client;
  if (auto code = Start(env, reqs.status(), &client)) return *code;
  auto stub = client->MakeStub<v1::VmService>();
  google::protobuf::Struct json;
  google::protobuf::ListValue* deleted = (*json.mutable_fields())["deleted"].mutable_list_value();
  google::protobuf::ListValue* failed = (*json.mutable_fields())["failed"].mutable_list_value();
  int code = 0;
  for (const v1::DeleteVmRequest& req : *reqs) {
    grpc::ClientContext ctx;
    client->Prepare(&ctx);
    v1::DeleteVmResponse resp;
    grpc::Status st;
    {
      std::unique_ptr<Progress> p = MaybeProgress(env, "stopping " + req.ref());
      st = stub->DeleteVm(&ctx, req, &resp);
    }
    if (client->Unreachable(st, ctx)) return client->Fail(st, "", ctx);
    if (!st.ok()) {
      code = client->Fail(st, "rm " + req.ref(), ctx);
      auto& f = *failed->add_values()->mutable_struct_value()->mutable_fields();
      f["ref"].set_string_value(req.ref());
      f["code"].set_string_value(StatusCodeConstant(st.error_code()));
      f["message"].set_string_value(st.error_message());
      continue;
    }
    if (env.g.json) {
      auto& d = *deleted->add_values()->mutable_struct_value()->mutable_fields();
      d["ref"].set_string_value(req.ref());
      d["id"].set_string_value(resp.id());
      d["stop_mode"].set_string_value(resp.stop_mode());
    } else {
      env.out << FormatDeleteVm(resp) << std::flush;
    }
  }
  if (env.g.json) client->PrintJson(json);
  return code;
}

int CmdSnapshotCreate(Env& env, const Args& args) {
  return Unary<v1::SnapshotService>(
      env, args, ParseCreateSnapshot, &v1::SnapshotService::Stub::CreateSnapshot,
      [](const v1::CreateSnapshotRequest& r) { return "snapshot create " + r.vm_ref(); },
      [](const v1::Snapshot& s) { return FormatSnapshotDetails(s, absl::Now()); },
      [](const v1::CreateSnapshotRequest& r) { return "snapshotting " + r.vm_ref(); });
}

int CmdSnapshotLs(Env& env, const Args& args) {
  return Listing<v1::SnapshotService>(
      env, args, ParseListSnapshots, &v1::SnapshotService::Stub::ListSnapshots, "snapshot ls",
      [](const v1::ListSnapshotsResponse& r) { return FormatSnapshotTable(r, absl::Now()); });
}

int CmdSnapshotGet(Env& env, const Args& args) {
  return Unary<v1::SnapshotService>(
      env, args, ParseGetSnapshot, &v1::SnapshotService::Stub::GetSnapshot,
      [](const v1::GetSnapshotRequest& r) { return "snapshot get " + r.ref(); },
      [](const v1::Snapshot& s) { return FormatSnapshotDetails(s, absl::Now()); });
}

int CmdSnapshotRm(Env& env, const Args& args) {
  return Unary<v1::SnapshotService>(
      env, args, ParseDeleteSnapshot, &v1::SnapshotService::Stub::DeleteSnapshot,
      [](const v1::DeleteSnapshotRequest& r) { return "snapshot rm " + r.ref(); },
      [](const v1::DeleteSnapshotResponse& r) { return FormatDeleteSnapshot(r); },
      [](const v1::DeleteSnapshotRequest& r) { return "deleting " + r.ref(); });
}

// clone exits 1 when any clone failed, after printing them all.
int CmdClone(Env& env, const Args& args) {
  absl::StatusOr<v1::CloneSnapshotRequest> req = ParseCloneSnapshot(env.flags, args);
  std::optional<Client> client;
  if (auto code = Start(env, req.status(), &client)) return *code;
  auto stub = client->MakeStub<v1::SnapshotService>();
  grpc::ClientContext ctx;
  client->Prepare(&ctx);
  v1::CloneSnapshotResponse resp;
  grpc::Status st;
  {
    std::unique_ptr<Progress> p =
        MaybeProgress(env, absl::StrCat("cloning ", req->snapshot_ref(), " x", req->count()));
    st = stub->CloneSnapshot(&ctx, *req, &resp);
  }
  if (!st.ok()) return client->Fail(st, "clone " + req->snapshot_ref(), ctx);
  if (env.g.json) {
    client->PrintJson(resp);
  } else {
    env.out << FormatCloneResult(resp);
  }
  int failed = 0;
  for (const v1::Vm& vm : resp.clones()) failed += vm.state() == v1::VM_STATE_FAILED ? 1 : 0;
  failed = std::max(failed, static_cast<int>(resp.failed()));
  if (failed == 0) return 0;
  env.err << "fcvmctl: clone " << req->snapshot_ref() << ": " << failed << " of "
          << std::max(resp.clones_size(), failed) << " clones failed\n";
  return 1;
}

// fork exits 1 when any fork failed, after printing them all.
int CmdFork(Env& env, const Args& args) {
  absl::StatusOr<v1::ForkVmRequest> req = ParseForkVm(env.flags, args);
  std::optional<Client> client;
  if (auto code = Start(env, req.status(), &client)) return *code;
  auto stub = client->MakeStub<v1::SnapshotService>();
  grpc::ClientContext ctx;
  client->Prepare(&ctx);
  v1::ForkVmResponse resp;
  grpc::Status st;
  {
    std::unique_ptr<Progress> p =
        MaybeProgress(env, absl::StrCat("forking ", req->vm_ref(), " x", req->count()));
    st = stub->ForkVm(&ctx, *req, &resp);
  }
  if (!st.ok()) return client->Fail(st, "fork " + req->vm_ref(), ctx);
  if (env.g.json) {
    client->PrintJson(resp);
  } else {
    env.out << FormatForkResult(resp);
  }
  int failed = 0;
  for (const v1::Vm& vm : resp.forks()) failed += vm.state() == v1::VM_STATE_FAILED ? 1 : 0;
  failed = std::max(failed, static_cast<int>(resp.failed()));
  if (failed == 0) return 0;
  env.err << "fcvmctl: fork " << req->vm_ref() << ": " << failed << " of "
          << std::max(resp.forks_size(), failed) << " forks failed\n";
  return 1;
}

int CmdStats(Env& env, const Args& args) {
  return Unary<v1::SystemService>(
      env, args, ParseGetPageServerStats, &v1::SystemService::Stub::GetPageServerStats,
      [](const v1::GetPageServerStatsRequest& r) {
        return r.vm_ref().empty() ? "stats" : "stats " + r.vm_ref();
      },
      [](const v1::PageServerStats& s) { return FormatPageServerStats(s); });
}

// metadata get|set: the VM's MMDS document as fcvmd's answer holds it (its
// caller's keys and fcvm's "fcvm" object).
int CmdMetadataGet(Env& env, const Args& args) {
  return Unary<v1::VmService>(
      env, args, ParseGetVmMetadata, &v1::VmService::Stub::GetVmMetadata,
      [](const v1::GetVmMetadataRequest& r) { return "metadata get " + r.ref(); },
      [](const v1::VmMetadata& m) { return m.json() + "\n"; });
}

int CmdMetadataSet(Env& env, const Args& args) {
  return Unary<v1::VmService>(
      env, args, ParseSetVmMetadata, &v1::VmService::Stub::SetVmMetadata,
      [](const v1::SetVmMetadataRequest& r) { return "metadata set " + r.ref(); },
      [](const v1::VmMetadata& m) { return m.json() + "\n"; });
}

// vsock: the VM's vsock socket from GetVm, then stdin/stdout to the guest
// port through Firecracker's CONNECT protocol (cli/vsock.h).
int CmdVsock(Env& env, const Args& args) {
  absl::StatusOr<VsockRequest> req = ParseVsock(env.flags, args);
  std::optional<Client> client;
  if (auto code = Start(env, req.status(), &client)) return *code;
  auto stub = client->MakeStub<v1::VmService>();
  grpc::ClientContext ctx;
  client->Prepare(&ctx);
  v1::Vm vm;
  const std::string what = absl::StrCat("vsock ", req->vm.ref(), " ", req->port);
  grpc::Status st = stub->GetVm(&ctx, req->vm, &vm);
  if (!st.ok()) return client->Fail(st, what, ctx);
  if (vm.vsock_uds_path().empty()) {
    env.err << "fcvmctl: " << what << ": vm " << vm.id() << " has no vsock (run it with --vsock)\n";
    return 1;
  }
  absl::StatusOr<UniqueFd> sock = VsockConnect(vm.vsock_uds_path(), req->port, req->connect_timeout);
  if (!sock.ok()) {
    env.err << "fcvmctl: " << what << ": " << sock.status().message() << "\n";
    return 1;
  }
  env.out << std::flush;
  absl::Status pumped = PumpVsock(sock->get(), STDIN_FILENO, STDOUT_FILENO);
  if (!pumped.ok()) {
    env.err << "fcvmctl: " << what << ": " << pumped.message() << "\n";
    return 1;
  }
  return 0;
}

// watch prints events until the stream ends, Ctrl-C (exit 0) or an explicit
// --timeout runs out (exit 0).
int CmdWatch(Env& env, const Args& args) {
  absl::StatusOr<v1::WatchEventsRequest> req = ParseWatchEvents(env.flags, args);
  std::optional<Client> client;
  if (auto code = Start(env, req.status(), &client)) return *code;
  auto stub = client->MakeStub<v1::SystemService>();
  grpc::ClientContext ctx;
  client->Prepare(&ctx);
  // Installed before the call starts, so a Ctrl-C at any point ends it cleanly.
  InterruptGuard guard([&ctx] { ctx.TryCancel(); });
  std::unique_ptr<grpc::ClientReader<v1::Event>> reader = stub->WatchEvents(&ctx, *req);
  v1::Event event;
  while (reader->Read(&event)) {
    env.out << (env.g.json ? ToJson(event, /*pretty=*/false) : FormatEvent(event) + "\n") << std::flush;
  }
  grpc::Status st = reader->Finish();
  if (st.ok() || guard.interrupted()) return 0;
  if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && !env.g.timeout.empty()) return 0;
  return client->Fail(st, req->ref().empty() ? "watch" : "watch " + req->ref(), ctx);
}

// top refreshes a table of VMs sorted by CPU % (or --sort) every --interval
// until Ctrl-C (exit 0) or --iterations frames; --json takes two samples an
// interval apart, prints one frame and exits.
int CmdTop(Env& env, const Args& args) {
  absl::StatusOr<TopOptions> top = ParseTop(env.flags, args);
  std::optional<Client> client;
  if (auto code = Start(env, top.status(), &client)) return *code;
  auto stub = client->MakeStub<v1::VmService>();
  absl::Notification stop;
  InterruptGuard guard([&stop] { stop.Notify(); });
  // Every page of the listing; nullopt, or the exit code of a failed call.
  auto sample = [&](v1::ListVmsResponse* all) -> std::optional<int> {
    v1::ListVmsRequest req = top->list;
    all->Clear();
    while (true) {
      grpc::ClientContext ctx;
      client->Prepare(&ctx);
      v1::ListVmsResponse page;
      grpc::Status st = stub->ListVms(&ctx, req, &page);
      if (!st.ok()) return guard.interrupted() ? 0 : client->Fail(st, "top", ctx);
      std::string next = page.next_page_token();
      page.clear_next_page_token();
      all->MergeFrom(page);
      if (next.empty()) return std::nullopt;
      req.set_page_token(next);
    }
  };
  const bool pss = top->list.usage() == v1::USAGE_DETAIL_FULL;
  v1::ListVmsResponse before;
  if (auto code = sample(&before)) return *code;
  for (int64_t frame = 0; top->iterations == 0 || frame < top->iterations; ++frame) {
    if (stop.WaitForNotificationWithTimeout(top->interval)) return 0;
    v1::ListVmsResponse now;
    if (auto code = sample(&now)) return *code;
    std::vector<TopRow> rows = ComputeTop(before, now, top->sort);
    if (env.g.json) {
      env.out << TopJson(rows, absl::Now(), top->interval) << std::flush;
      return 0;
    }
    if (env.stdout_tty) {
      env.out << "\x1b[H\x1b[2J";  // home, clear: one frame on screen like top(1)
    } else if (frame > 0) {
      env.out << "\n";
    }
    env.out << FormatTop(rows, absl::Now(), pss) << std::flush;
    before = std::move(now);
  }
  return 0;
}

const std::vector<Command>& Commands() {
  const absl::Duration kQuick = absl::Seconds(30);
  static const std::vector<Command> kCommands = {
      {"run", "run --kernel PATH [options]", "boot a new VM from a kernel", absl::Minutes(5), CmdRun},
      {"ls", "ls [--label K=V]... [--state S]... [--snapshot REF] [--pss]",
       "list VMs with their CPU time, memory and faults served", kQuick, CmdLs},
      {"get", "get REF", "show one VM: state, config, network, timings, usage", kQuick, CmdGet},
      {"pause", "pause REF", "pause a running VM", kQuick, CmdPause},
      {"resume", "resume REF", "resume a paused VM", kQuick, CmdResume},
      {"rm", "rm REF... [--force] [--grace DURATION]", "stop and delete VMs", absl::Minutes(2), CmdRm},
      {"snapshot create", "snapshot create VM_REF [options]", "snapshot a running or paused VM",
       absl::Minutes(10), CmdSnapshotCreate},
      {"snapshot ls", "snapshot ls [--label K=V]...", "list snapshots", kQuick, CmdSnapshotLs},
      {"snapshot get", "snapshot get REF", "show one snapshot", kQuick, CmdSnapshotGet},
      {"snapshot rm", "snapshot rm REF [--force]", "delete a snapshot", absl::Minutes(2), CmdSnapshotRm},
      {"clone", "clone SNAPSHOT_REF [options]", "start clones of a snapshot, with timings", absl::Minutes(10),
       CmdClone},
      {"fork", "fork VM_REF [options]",
       "fork a running VM live: clones of it as it is now (paused only to write what changed)",
       absl::Minutes(10), CmdFork},
      {"vsock", "vsock VM_REF PORT [--connect-timeout D]",
       "connect stdin/stdout to a guest vsock port (Firecracker's CONNECT protocol)", kQuick, CmdVsock},
      {"metadata get", "metadata get VM_REF", "print a VM's metadata (its MMDS contents)", kQuick,
       CmdMetadataGet},
      {"metadata set", "metadata set VM_REF FILE|-",
       "replace a VM's metadata with a JSON object (fcvm's own keys stay)", kQuick, CmdMetadataSet},
      {"stats", "stats [VM_REF]", "page server counters per clone session", kQuick, CmdStats},
      {"top", "top [--interval D] [--sort KEY] [--pss] [--iterations N]",
       "VMs sorted by CPU % (or memory, faults), refreshed like top(1)", kQuick, CmdTop},
      {"watch", "watch [REF] [--from-start | --after SEQ]", "print lifecycle events as they happen",
       absl::InfiniteDuration(), CmdWatch},
      {"version", "version", "print fcvmctl's, fcvmd's and Firecracker's versions", kQuick, CmdVersion},
  };
  return kCommands;
}

std::string TopHelp() {
  FlagParser flags("fcvmctl [options] <command> [command options]");
  GlobalOptions g;
  AddGlobalFlags(flags, &g);
  std::string out = flags.Help();
  out += "\ncommands:\n";
  for (const Command& c : Commands()) out += absl::StrFormat("  %-16s %s\n", c.name, c.summary);
  out += "\n'fcvmctl <command> --help' shows a command's options.\n";
  return out;
}

std::string SnapshotHelp() {
  std::string out = "usage: fcvmctl [options] snapshot <create|ls|get|rm> [command options]\n\ncommands:\n";
  for (const Command& c : Commands()) {
    if (absl::string_view(c.name).substr(0, 9) == "snapshot ") {
      out += absl::StrFormat("  %-16s %s\n", c.name, c.summary);
    }
  }
  return out;
}

bool IsHelp(const std::string& arg) { return arg == "--help" || arg == "-h"; }

}  // namespace

int RunCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err, bool stderr_is_tty,
           bool stdout_is_tty) {
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
  std::string name = (*rest)[0];
  size_t consumed = 1;
  if (name == "metadata") {
    if (rest->size() < 2 || IsHelp((*rest)[1])) {
      (rest->size() < 2 && !global.help_requested() ? err : out)
          << "usage: fcvmctl [options] metadata <get|set> VM_REF [FILE|-]\n";
      return rest->size() < 2 && !global.help_requested() ? 2 : 0;
    }
    name += " " + (*rest)[1];
    consumed = 2;
  } else if (name == "snapshot") {
    if (rest->size() >= 2 && IsHelp((*rest)[1])) {
      out << SnapshotHelp();
      return 0;
    }
    if (rest->size() < 2) {
      if (global.help_requested()) {
        out << SnapshotHelp();
        return 0;
      }
      err << "fcvmctl: snapshot: missing subcommand (create, ls, get or rm; see 'fcvmctl snapshot --help')\n";
      return 2;
    }
    name += " " + (*rest)[1];
    consumed = 2;
  }
  const Command* command = nullptr;
  for (const Command& c : Commands()) {
    if (name == c.name) command = &c;
  }
  if (command == nullptr) {
    err << "fcvmctl: unknown command '" << name << "' (see 'fcvmctl --help')\n";
    return 2;
  }
  FlagParser flags(absl::StrCat("fcvmctl [options] ", command->usage, "\n\n", command->summary));
  AddGlobalFlags(flags, &g);
  Env env{*command, g, flags, out, err, stderr_is_tty, stdout_is_tty};
  // "fcvmctl --help ls": the command's help, whatever else follows.
  if (global.help_requested()) return command->run(env, {"--help"});
  return command->run(env,
                      std::vector<std::string>(rest->begin() + static_cast<long>(consumed), rest->end()));
}

}  // namespace fcvm::cli
