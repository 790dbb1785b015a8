#include "lib/vm/real_env.h"

#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

class RealVmmFactory;

// A Firecracker this fcvmd launched, or one it re-adopted after a restart
// (then only its pid, its API socket and whether it is jailed are known).
class RealVmm final : public Vmm {
 public:
  explicit RealVmm(std::unique_ptr<firecracker::Vmm> vmm) : vmm_(std::move(vmm)) {}
  // `jail_id` is set for a jailed process: its jail is removed once it is
  // killed.
  RealVmm(Process adopted, std::string vm_dir, const std::string& api_socket, RealVmmFactory* factory,
          std::string jail_id)
      : adopted_(std::move(adopted)),
        vm_dir_(std::move(vm_dir)),
        api_(std::make_unique<firecracker::ApiClient>(api_socket)),
        factory_(factory),
        jail_id_(std::move(jail_id)) {}
  ~RealVmm() override {
    // An adopted process that nobody released or killed is left running: it
    // was not ours to begin with. (A launched one is killed by its Vmm.)
    if (adopted_.valid()) adopted_.Release();
  }

  // An adopted Firecracker's console goes on into its console.log. A VM
  // started by an fcvmd without a console FIFO keeps running uncaptured.
  void CaptureConsole(size_t max_log_bytes) {
    absl::StatusOr<std::unique_ptr<firecracker::ConsoleCapture>> console =
        firecracker::ReattachConsole(vm_dir_, max_log_bytes);
    if (console.ok()) {
      console_ = *std::move(console);
    } else {
      spdlog::warn("vm {}: its console is not captured: {}", vm_dir_.substr(vm_dir_.rfind('/') + 1),
                   console.status());
    }
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
  absl::Status PutMmds(absl::string_view json) override { return Api().PutMmds(json); }
  absl::StatusOr<std::string> GetMmds() override { return Api().GetMmds(); }
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
    // PID 1 of its own namespace, a jailed Firecracker ignores SIGTERM: no
    // use waiting (the caller kills it).
    if (jailed()) return false;
    PidfdSendSignal(fd, SIGTERM);
    struct pollfd pfd = {fd, POLLIN, 0};
    return poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(grace))) > 0;
  }
  absl::StatusOr<ExitStatus> Kill() override;
  void Release() override {
    if (vmm_) {
      vmm_->Detach();
    } else {
      if (console_ != nullptr) console_->Stop();
      adopted_.Release();
    }
  }
  std::string RecentOutput() override {
    if (vmm_) return vmm_->RecentOutput();
    if (console_ == nullptr) return "";
    std::vector<std::string> con = console_->LastLines(4);
    return con.empty() ? "" : absl::StrCat("; console: [", absl::StrJoin(con, " | "), "]");
  }

  absl::Status PlaceFile(const firecracker::JailFile& file) override {
    if (!vmm_) return absl::FailedPreconditionError("a re-adopted Firecracker takes no new files");
    return vmm_->PlaceFile(file);
  }
  absl::Status UpdateLimits(const firecracker::CgroupLimits& limits) override {
    if (!vmm_)
      return absl::FailedPreconditionError("the limits of a re-adopted Firecracker stay as they are");
    return vmm_->UpdateCgroupLimits(limits);
  }
  absl::StatusOr<firecracker::CgroupLimits> ReadLimits() override {
    if (!vmm_) return absl::FailedPreconditionError("the limits of a re-adopted Firecracker are not read");
    return vmm_->ReadCgroupLimits();
  }
  std::string cgroup_version() const override {
    if (!vmm_ || !vmm_->jailed()) return "";
    return vmm_->cgroup_plan().version == firecracker::CgroupVersion::kV2 ? "v2" : "v1";
  }

 private:
  bool jailed() const { return vmm_ ? vmm_->jailed() : !jail_id_.empty(); }
  firecracker::ApiClient& Api() { return vmm_ ? vmm_->api() : *api_; }

  std::unique_ptr<firecracker::Vmm> vmm_;
  Process adopted_;
  std::string vm_dir_;
  std::unique_ptr<firecracker::ApiClient> api_;
  RealVmmFactory* factory_ = nullptr;
  std::string jail_id_;
  std::unique_ptr<firecracker::ConsoleCapture> console_;  // adopted only
};

class RealVmmFactory final : public VmmFactory {
 public:
  RealVmmFactory(firecracker::FirecrackerBinary binary, std::optional<firecracker::JailerBinary> jailer,
                 std::optional<firecracker::CgroupHost> cgroups, const RealEnvOptions& options)
      : binary_(std::move(binary)),
        jailer_(std::move(jailer)),
        cgroups_(std::move(cgroups)),
        options_(options) {}

  absl::StatusOr<std::unique_ptr<Vmm>> Launch(const LaunchSpec& spec) override {
    RETURN_IF_ERROR(spec.cancel.Check());
    firecracker::VmmOptions o;
    o.vm_dir = spec.vm_dir;
    o.id = spec.id;
    o.console_max_bytes = options_.console_max_bytes;
    o.start_timeout = options_.start_timeout;
    // No parent-death signal, not even for a pooled process: it may become a
    // VM that must outlive fcvmd, and a signal cannot be taken back once
    // Firecracker runs (the jailer's uid change clears it anyway). An unused
    // pooled process left by a crash has no record: the next start-up
    // reconcile kills it.
    if (jailer_.has_value()) {
      if (!spec.jail.has_value()) return absl::InternalError("launch: a jailed VM without a jail spec");
      firecracker::JailOptions j;
      j.jailer = *jailer_;
      j.chroot_base_dir = options_.jail_dir;
      j.uid = spec.jail->uid;
      j.gid = spec.jail->gid;
      j.netns_path = spec.jail->netns_path;
      j.parent_cgroup = options_.parent_cgroup;
      j.limits = spec.jail->limits;
      j.cgroup_host = cgroups_;
      j.files = spec.jail->files;
      o.jail = std::move(j);
    } else {
      o.bind_mounts = spec.bind_mounts;
      o.new_mount_namespace = !spec.bind_mounts.empty();
      o.netns_fd = spec.netns_fd;
    }
    o.memory_merge = spec.memory_merge;
    ASSIGN_OR_RETURN(std::unique_ptr<firecracker::Vmm> vmm, firecracker::Vmm::Launch(binary_, o));
    return std::make_unique<RealVmm>(std::move(vmm));
  }

  absl::StatusOr<std::unique_ptr<Vmm>> Adopt(pid_t pid, const std::string& vm_dir) override {
    ASSIGN_OR_RETURN(Process p, Process::Adopt(pid));
    const std::string id = vm_dir.substr(vm_dir.rfind('/') + 1);
    if (jailer_.has_value()) {
      // A jailed Firecracker's command line has jail paths only: its root
      // directory must be this VM's chroot.
      absl::StatusOr<firecracker::JailPaths> paths = JailFor(id);
      if (!paths.ok() || JailedIdOf(pid) != id) {
        p.Release();
        return absl::NotFoundError(absl::StrCat("pid ", pid, " is no longer the VM's firecracker"));
      }
      auto vmm = std::make_unique<RealVmm>(std::move(p), vm_dir,
                                           paths->chroot_dir + "/run/firecracker.socket", this, id);
      vmm->CaptureConsole(options_.console_max_bytes);
      return std::unique_ptr<Vmm>(std::move(vmm));
    }
    // The pid must still be this VM's Firecracker: its command line names the
    // VM's API socket.
    absl::StatusOr<std::string> cmdline = ReadFile(absl::StrCat("/proc/", pid, "/cmdline"));
    if (!cmdline.ok() || !absl::StrContains(*cmdline, vm_dir + "/api.sock")) {
      p.Release();
      return absl::NotFoundError(absl::StrCat("pid ", pid, " is no longer the VM's firecracker"));
    }
    auto vmm = std::make_unique<RealVmm>(std::move(p), vm_dir, vm_dir + "/api.sock", this, "");
    vmm->CaptureConsole(options_.console_max_bytes);
    return std::unique_ptr<Vmm>(std::move(vmm));
  }

  std::map<pid_t, std::string> FindRunning(const std::string& vms_dir) override {
    std::map<pid_t, std::string> out;
    DIR* proc = opendir("/proc");
    if (proc == nullptr) return out;
    const std::string prefix = vms_dir + "/";
    while (dirent* d = readdir(proc)) {
      pid_t pid = 0;
      if (!absl::SimpleAtoi(d->d_name, &pid) || pid <= 0) continue;
      if (jailer_.has_value()) {
        if (std::string id = JailedIdOf(pid); !id.empty()) {
          out[pid] = prefix + id;
          continue;
        }
      }
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
  std::string snapshot_format() const override {
    const firecracker::Version& f = binary_.snapshot_format();
    return f.major == 0 && f.minor == 0 && f.patch == 0 ? "" : f.ToString();
  }

  bool jailed() const override { return jailer_.has_value(); }
  std::string isolation() const override {
    return jailer_.has_value() ? absl::StrCat("jailer ", jailer_->version().ToString()) : "none";
  }
  absl::StatusOr<firecracker::JailPaths> JailFor(const std::string& id) const override {
    if (!jailer_.has_value()) return absl::FailedPreconditionError("VMs are not jailed (fcvmd --no-jailer)");
    return firecracker::JailPathsFor(binary_.path(), options_.jail_dir, id);
  }
  absl::Status RemoveJail(const std::string& id) override {
    ASSIGN_OR_RETURN(firecracker::JailPaths paths, JailFor(id));
    return firecracker::RemoveJail(paths, cgroups_.value_or(firecracker::CgroupHost{}),
                                   options_.parent_cgroup, id);
  }
  std::vector<std::string> ListJails() override {
    if (!jailer_.has_value()) return {};
    return firecracker::ListJails(binary_.path(), options_.jail_dir).value_or(std::vector<std::string>{});
  }

 private:
  // The VM id of `pid` when it is a jailed Firecracker of this fcvmd, else
  // "": its command line is "/firecracker --id ID ..." and its root
  // directory is that VM's chroot. Compared by device and inode: the text of
  // /proc/<pid>/root is "/" in the jailed process's own mount namespace.
  std::string JailedIdOf(pid_t pid) const {
    absl::StatusOr<std::string> cmdline = ReadFile(absl::StrCat("/proc/", pid, "/cmdline"));
    if (!cmdline.ok()) return "";
    std::vector<std::string> argv = absl::StrSplit(*cmdline, '\0');
    if (argv.size() < 3 || argv[0] != "/firecracker" || argv[1] != "--id") return "";
    absl::StatusOr<firecracker::JailPaths> paths = JailFor(argv[2]);
    if (!paths.ok()) return "";
    struct stat root, chroot;
    if (stat(absl::StrCat("/proc/", pid, "/root").c_str(), &root) != 0) return "";
    if (stat(paths->chroot_dir.c_str(), &chroot) != 0) return "";
    if (root.st_dev != chroot.st_dev || root.st_ino != chroot.st_ino) return "";
    return argv[2];
  }

  const firecracker::FirecrackerBinary binary_;
  const std::optional<firecracker::JailerBinary> jailer_;
  const std::optional<firecracker::CgroupHost> cgroups_;
  const RealEnvOptions options_;
};

absl::StatusOr<ExitStatus> RealVmm::Kill() {
  if (vmm_) return vmm_->Kill();
  ASSIGN_OR_RETURN(ExitStatus exit, adopted_.Kill());
  if (!jail_id_.empty() && factory_ != nullptr) {
    if (absl::Status st = factory_->RemoveJail(jail_id_); !st.ok()) {
      spdlog::warn("vm {}: removing its jail: {}", jail_id_, st);
    }
  }
  return exit;
}

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
  absl::Status DetachListener(uffd::ListenerId id) override { return server_->DetachListener(id); }
  absl::StatusOr<uffd::ListenerId> AdoptClone(const uffd::ListenerSpec& spec, const std::string& handshake,
                                              pid_t pid) override {
    uffd::AdoptSpec adopt;
    adopt.listener = spec;
    adopt.handshake = handshake;
    adopt.pid = pid;
    ASSIGN_OR_RETURN(adopt.uffd, uffd::TakeUserfaultfd(pid));
    return server_->AdoptSession(std::move(adopt));
  }

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
  absl::StatusOr<VmNetworkInfo> Setup(const std::string& vm_id, const std::vector<PortMapping>& publish,
                                      uint32_t tap_owner) override {
    RETURN_IF_ERROR(Available());
    std::vector<net::PublishedPort> ports;
    for (const PortMapping& p : publish) {
      ports.push_back(
          {p.protocol == "udp" ? net::Protocol::kUdp : net::Protocol::kTcp, p.host_port, p.guest_port});
    }
    absl::StatusOr<net::VmNetwork> n = manager_->Setup(vm_id, ports, static_cast<uid_t>(tap_owner));
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
  absl::StatusOr<HugePagePool> HugePagePoolOf(uint64_t page_size) override {
    return ReadHugePagePoolOf(page_size);
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
    std::optional<firecracker::JailerBinary> jailer;
    std::optional<firecracker::CgroupHost> cgroups;
    if (!options.jailer_bin.empty()) {
      ASSIGN_OR_RETURN(jailer, firecracker::JailerBinary::Probe(options.jailer_bin));
      ASSIGN_OR_RETURN(cgroups, firecracker::CgroupHost::Detect());
      RETURN_IF_ERROR(MakeDirs(options.jail_dir, 0711));
    }
    env.vmms =
        std::make_unique<RealVmmFactory>(std::move(bin), std::move(jailer), std::move(cgroups), options);
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
