#include "lib/vm/real_env.h"

#include <dirent.h>
#include <poll.h>
#include <signal.h>

#include <fstream>
#include <map>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "lib/base/file_util.h"
#include "lib/base/logging.h"
#include "lib/base/pidfd.h"
#include "lib/base/status.h"
#include "lib/net/network_manager.h"
#include "lib/storage/disk.h"
#include "lib/vm/vm_usage.h"
#include "spdlog/spdlog.h"

namespace fcvm::vm {
namespace {

// ---- Firecracker --------------------------------------------------------

// A Firecracker this fcvmd launched, or one it re-adopted after a restart
// (then only its pid and API socket are known).
class RealVmm final : public Vmm {
 public:
  explicit RealVmm(std::unique_ptr<firecracker::Vmm> vmm) : vmm_(std::move(vmm)) {}
  RealVmm(Process adopted, std::string vm_dir)
      : adopted_(std::move(adopted)),
        vm_dir_(std::move(vm_dir)),
        api_(std::make_unique<firecracker::ApiClient>(vm_dir_ + "/api.sock")) {}
  ~RealVmm() override {
    // An adopted process that nobody released or killed is left running: it
    // was not ours to begin with. (A launched one is killed by its Vmm.)
    if (adopted_.valid()) adopted_.Release();
  }

  pid_t pid() const override { return vmm_ ? vmm_->pid() : adopted_.pid(); }
  int pidfd() const override { return vmm_ ? vmm_->pidfd() : adopted_.pidfd(); }
  std::string console_log_path() const override {
    return vmm_ ? vmm_->console_log_path() : vm_dir_ + "/console.log";
  }
  absl::Duration startup_time() const override { return vmm_ ? vmm_->startup_time() : absl::ZeroDuration(); }

  absl::Status Boot(const firecracker::BootSpec& spec) override {
    if (!vmm_) return absl::FailedPreconditionError("a re-adopted Firecracker cannot boot");
    return vmm_->Boot(spec);
  }
  absl::Status LoadSnapshot(const firecracker::SnapshotLoad& load, absl::Duration timeout) override {
    if (!vmm_) return absl::FailedPreconditionError("a re-adopted Firecracker cannot load a snapshot");
    return vmm_->LoadSnapshot(load, timeout);
  }
  absl::Status CreateSnapshot(const firecracker::SnapshotCreate& create, absl::Duration timeout) override {
    if (vmm_) return vmm_->CreateSnapshot(create, timeout);
    return api_->CreateSnapshot(create, timeout);
  }
  absl::Status Pause() override { return Api().Pause(); }
  absl::Status Resume() override { return Api().Resume(); }
  absl::Status CheckRunning() override {
    if (vmm_) return vmm_->CheckRunning();
    absl::StatusOr<std::optional<ExitStatus>> st = adopted_.TryWait();
    if (!st.ok()) return st.status();
    if (st->has_value()) return absl::UnavailableError(absl::StrCat("firecracker (pid ", pid(), ") exited"));
    return absl::OkStatus();
  }
  bool Terminate(absl::Duration grace) override {
    int fd = pidfd();
    if (fd < 0) return true;
    PidfdSendSignal(fd, SIGTERM);
    struct pollfd pfd = {fd, POLLIN, 0};
    return poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(grace))) > 0;
  }
  absl::StatusOr<ExitStatus> Kill() override {
    if (vmm_) return vmm_->Kill();
    return adopted_.Kill();
  }
  void Release() override {
    if (vmm_) {
      vmm_->Detach();
    } else {
      adopted_.Release();
    }
  }
  std::string RecentOutput() override { return vmm_ ? vmm_->RecentOutput() : ""; }

 private:
  firecracker::ApiClient& Api() { return vmm_ ? vmm_->api() : *api_; }

  std::unique_ptr<firecracker::Vmm> vmm_;
  Process adopted_;
  std::string vm_dir_;
  std::unique_ptr<firecracker::ApiClient> api_;
};

class RealVmmFactory final : public VmmFactory {
 public:
  RealVmmFactory(firecracker::FirecrackerBinary binary, const RealEnvOptions& options)
      : binary_(std::move(binary)), options_(options) {}

  absl::StatusOr<std::unique_ptr<Vmm>> Launch(const LaunchSpec& spec) override {
    RETURN_IF_ERROR(spec.cancel.Check());
    firecracker::VmmOptions o;
    o.vm_dir = spec.vm_dir;
    o.id = spec.id;
    o.console_max_bytes = options_.console_max_bytes;
    o.start_timeout = options_.start_timeout;
    o.bind_mounts = spec.bind_mounts;
    o.new_mount_namespace = !spec.bind_mounts.empty();
    o.netns_fd = spec.netns_fd;
    o.parent_death_signal = spec.pooled ? SIGKILL : 0;
    ASSIGN_OR_RETURN(std::unique_ptr<firecracker::Vmm> vmm, firecracker::Vmm::Launch(binary_, o));
    return std::make_unique<RealVmm>(std::move(vmm));
  }

  absl::StatusOr<std::unique_ptr<Vmm>> Adopt(pid_t pid, const std::string& vm_dir) override {
    ASSIGN_OR_RETURN(Process p, Process::Adopt(pid));
    // The pid must still be this VM's Firecracker: its command line names the
    // VM's API socket.
    absl::StatusOr<std::string> cmdline = ReadFile(absl::StrCat("/proc/", pid, "/cmdline"));
    if (!cmdline.ok() || !absl::StrContains(*cmdline, vm_dir + "/api.sock")) {
      p.Release();
      return absl::NotFoundError(absl::StrCat("pid ", pid, " is no longer the VM's firecracker"));
    }
    return std::make_unique<RealVmm>(std::move(p), vm_dir);
  }

  std::map<pid_t, std::string> FindRunning(const std::string& vms_dir) override {
    std::map<pid_t, std::string> out;
    DIR* proc = opendir("/proc");
    if (proc == nullptr) return out;
    const std::string prefix = vms_dir + "/";
    while (dirent* d = readdir(proc)) {
      pid_t pid = 0;
      if (!absl::SimpleAtoi(d->d_name, &pid) || pid <= 0) continue;
      absl::StatusOr<std::string> cmdline = ReadFile(absl::StrCat("/proc/", pid, "/cmdline"));
      if (!cmdline.ok()) continue;
      // Firecracker's argv: ... --api-sock <vms_dir>/<id>/api.sock ...
      for (absl::string_view arg : absl::StrSplit(*cmdline, '\0')) {
        if (absl::StartsWith(arg, prefix) && absl::EndsWith(arg, "/api.sock")) {
          out[pid] = std::string(arg.substr(0, arg.size() - std::string("/api.sock").size()));
          break;
        }
      }
    }
    closedir(proc);
    return out;
  }

  std::string version() const override { return binary_.version().ToString(); }

 private:
  const firecracker::FirecrackerBinary binary_;
  const RealEnvOptions options_;
};

// ---- page server --------------------------------------------------------

class RealPageService final : public PageService {
 public:
  explicit RealPageService(std::unique_ptr<uffd::PageServer> server) : server_(std::move(server)) {}

  absl::StatusOr<uffd::ListenerId> AddListener(const uffd::ListenerSpec& spec,
                                               uffd::ClonePolicy* resolved) override {
    return server_->AddListener(spec, resolved);
  }
  absl::Status WaitPrefetchDone(uffd::ListenerId id, absl::Time deadline) override {
    return server_->WaitPrefetchDone(id, deadline);
  }
  absl::Status RemoveListener(uffd::ListenerId id) override { return server_->RemoveListener(id); }

  absl::Status Pin(const std::string& snapshot_id, const uffd::SnapshotFiles& files) override {
    {
      absl::MutexLock lock(&mu_);
      if (pinned_.count(snapshot_id) > 0) return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(std::shared_ptr<uffd::SnapshotMemory> view, server_->OpenSnapshot(files));
    absl::MutexLock lock(&mu_);
    pinned_.emplace(snapshot_id, std::move(view));
    return absl::OkStatus();
  }
  void Unpin(const std::string& snapshot_id) override {
    std::shared_ptr<uffd::SnapshotMemory> view;  // released outside the lock
    absl::MutexLock lock(&mu_);
    auto it = pinned_.find(snapshot_id);
    if (it == pinned_.end()) return;
    view = std::move(it->second);
    pinned_.erase(it);
  }
  uint64_t WorkingSetPages(const std::string& snapshot_id, const uffd::SnapshotFiles& files) override {
    {
      absl::MutexLock lock(&mu_);
      auto it = pinned_.find(snapshot_id);
      if (it != pinned_.end()) {
        auto ws = it->second->working_set();
        if (ws != nullptr) return ws->size();
      }
    }
    return uffd::WorkingSetFilePages(files.working_set_path).value_or(0);
  }
  uffd::ServerStats GetStats() override { return server_->GetStats(); }
  void SetEventCallback(std::function<void(const uffd::SessionEvent&)> callback) override {
    server_->SetEventCallback(std::move(callback));
  }
  void Stop() override {
    {
      absl::MutexLock lock(&mu_);
      pinned_.clear();
    }
    server_->Stop();
  }

 private:
  std::unique_ptr<uffd::PageServer> server_;
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<uffd::SnapshotMemory>> pinned_ ABSL_GUARDED_BY(mu_);
};

// ---- network --------------------------------------------------------------

class RealNetworkService final : public NetworkService {
 public:
  RealNetworkService(std::unique_ptr<net::NetworkManager> manager, std::string error)
      : manager_(std::move(manager)), error_(std::move(error)) {}

  absl::Status Available() const override {
    if (manager_ != nullptr) return absl::OkStatus();
    return absl::UnavailableError(absl::StrCat("VM networking is not available on this host: ", error_));
  }
  absl::StatusOr<VmNetworkInfo> Setup(const std::string& vm_id,
                                      const std::vector<PortMapping>& publish) override {
    RETURN_IF_ERROR(Available());
    std::vector<net::PublishedPort> ports;
    for (const PortMapping& p : publish) {
      ports.push_back(
          {p.protocol == "udp" ? net::Protocol::kUdp : net::Protocol::kTcp, p.host_port, p.guest_port});
    }
    absl::StatusOr<net::VmNetwork> n = manager_->Setup(vm_id, ports);
    if (!n.ok()) return Annotate(n.status(), "network");
    VmNetworkInfo out;
    out.netns = std::move(n->netns);
    out.netns_name = n->netns_name;
    out.tap = n->tap_name;
    out.guest_ip = n->guest_ip.ToString();
    out.host_ip = n->vm_ip.ToString();
    return out;
  }
  absl::Status Teardown(const std::string& vm_id) override {
    if (manager_ == nullptr) return absl::OkStatus();
    return manager_->Teardown(vm_id);
  }
  absl::StatusOr<std::vector<std::string>> ReconcileOrphans(
      const absl::flat_hash_set<std::string>& live) override {
    if (manager_ == nullptr) return std::vector<std::string>{};
    return manager_->ReconcileOrphans(live);
  }
  absl::Status RemoveHostRules() override {
    if (manager_ == nullptr) return absl::OkStatus();
    return manager_->RemoveHostRules();
  }

 private:
  std::unique_ptr<net::NetworkManager> manager_;
  std::string error_;
};

// ---- host -------------------------------------------------------------------

class RealHost final : public Host {
 public:
  explicit RealHost(bool reflinks) : reflinks_(reflinks) {}

  absl::StatusOr<uint64_t> MemAvailableMib() override {
    std::ifstream meminfo("/proc/meminfo");
    std::string key, unit;
    uint64_t kib = 0;
    while (meminfo >> key >> kib >> unit) {
      if (key == "MemAvailable:") return kib / 1024;
    }
    return absl::UnavailableError("cannot read MemAvailable from /proc/meminfo");
  }
  absl::StatusOr<uint64_t> AllocatedBytes(const std::string& path) override {
    return storage::AllocatedBytes(path);
  }
  absl::Status CheckFreeSpace(const std::string& dir, uint64_t need, absl::string_view what) override {
    return storage::CheckFreeSpace(dir, need, what);
  }
  bool reflinks() const override { return reflinks_; }
  absl::Status CopyDisk(const std::string& src, const std::string& dst, const CancelToken& cancel) override {
    // Not fsynced: a running VM's private copy means nothing after a host
    // reboot.
    return storage::CopyDisk(src, dst, {.durable = false, .mode = 0600, .cancel = cancel}).status();
  }
  absl::Status WriteRecord(const std::string& path, absl::string_view contents) override {
    // Not fsynced either: a VM record only matters while the host stays up,
    // and a crash of fcvmd does not lose the page cache.
    return WriteFileAtomic(path, contents, 0600, /*durable=*/false);
  }
  absl::StatusOr<ProcessUsage> ReadProcessUsage(pid_t pid, bool pss) override {
    return ReadProcProcessUsage(pid, pss);
  }

 private:
  const bool reflinks_;
};

}  // namespace

absl::StatusOr<Env> CreateRealEnv(const RealEnvOptions& options) {
  Env env;
  if (!options.firecracker_bin.empty()) {
    ASSIGN_OR_RETURN(firecracker::FirecrackerBinary bin,
                     firecracker::FirecrackerBinary::Probe(options.firecracker_bin));
    env.vmms = std::make_unique<RealVmmFactory>(std::move(bin), options);
  }
  ASSIGN_OR_RETURN(std::unique_ptr<uffd::PageServer> server,
                   uffd::PageServer::Create({.threads = options.page_server_threads}));
  env.pager = std::make_unique<RealPageService>(std::move(server));
  std::unique_ptr<net::NetworkManager> network;
  std::string network_error = "turned off";
  if (options.networking) {
    net::NetworkOptions no;
    no.state_dir = options.state_dir + "/net";
    no.pool_cidr = options.network_pool;
    no.uplink = options.network_uplink;
    no.name_prefix = options.network_prefix;
    absl::StatusOr<std::unique_ptr<net::NetworkManager>> nm = net::NetworkManager::Create(no);
    if (nm.ok()) {
      network = *std::move(nm);
    } else {
      network_error = std::string(nm.status().message());
      spdlog::warn("VM networking unavailable: {}", nm.status());
    }
  }
  env.network = std::make_unique<RealNetworkService>(std::move(network), network_error);
  std::string vms_dir = options.state_dir + "/vms";
  RETURN_IF_ERROR(MakeDirs(vms_dir, 0700));
  env.host = std::make_unique<RealHost>(storage::SupportsReflink(vms_dir));
  return env;
}

}  // namespace fcvm::vm
