#include "tests/unit/vm/fake_env.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/base/file_util.h"
#include "lib/base/status.h"
#include "lib/storage/disk.h"

namespace fcvm::vm::testing {

// ---- Gate -----------------------------------------------------------------

void Gate::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

void Gate::Open() {
  absl::MutexLock lock(&mu_);
  closed_ = false;
}

absl::Status Gate::Wait(const CancelToken& cancel) {
  absl::MutexLock lock(&mu_);
  ++arrived_;
  while (closed_) {
    // The cancellation is another object's: look at it every few ms.
    mu_.AwaitWithTimeout(absl::Condition(
                             +[](bool* closed) { return !*closed; }, &closed_),
                         absl::Milliseconds(5));
    if (absl::Status st = cancel.Check(); !st.ok()) return st;
  }
  return absl::OkStatus();
}

bool Gate::AwaitArrivals(int n, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  struct Arg {
    int* arrived;
    int n;
  } arg{&arrived_, n};
  return mu_.AwaitWithTimeout(absl::Condition(
                                  +[](Arg* a) { return *a->arrived >= a->n; }, &arg),
                              timeout);
}

int Gate::arrived() const {
  absl::MutexLock lock(&mu_);
  return arrived_;
}

namespace {

class FakeVmm;

// Every fake process by pid, for ExitFakeProcess.
absl::Mutex g_processes_mu;
std::map<pid_t, FakeVmm*>& Processes() {
  static auto* processes = new std::map<pid_t, FakeVmm*>();
  return *processes;
}
std::atomic<pid_t> g_next_pid{100000};

// A vmstate file with Firecracker's x86_64 header: magic, then the format
// version as a length-prefixed string.
std::string FakeVmstate(const std::string& format) {
  std::string out;
  const uint64_t magic = 0x0710198486640000ull, len = format.size();
  out.append(reinterpret_cast<const char*>(&magic), 8);
  out.append(reinterpret_cast<const char*>(&len), 8);
  out += format;
  out += "fake vmstate";
  return out;
}

class FakeVmm final : public Vmm {
 public:
  FakeVmm(std::shared_ptr<FakeWorld> world, pid_t pid, std::string dir, std::string jail_dir = "")
      : world_(std::move(world)),
        pid_(pid),
        dir_(std::move(dir)),
        jail_dir_(std::move(jail_dir)),
        exit_fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    {
      absl::MutexLock lock(&world_->mu);
      ++world_->alive;
    }
    absl::MutexLock lock(&g_processes_mu);
    Processes()[pid_] = this;
  }
  ~FakeVmm() override {
    // Like a launched Firecracker's owner: killed unless released.
    if (!released_) (void)Kill();
    absl::MutexLock lock(&g_processes_mu);
    Processes().erase(pid_);
  }

  pid_t pid() const override { return pid_; }
  int pidfd() const override { return exit_fd_.get(); }
  std::string console_log_path() const override { return dir_ + "/console.log"; }
  absl::Duration startup_time() const override { return absl::Milliseconds(3); }

  absl::Status Boot(const firecracker::BootSpec& spec) override {
    RETURN_IF_ERROR(world_->boot_gate.Wait());
    absl::MutexLock lock(&world_->mu);
    ++world_->boots;
    world_->boot_specs.push_back(spec);
    if (spec.mmds_data.has_value()) world_->mmds[pid_] = *spec.mmds_data;
    vcpus_running_ = true;
    world_->boot_huge_pages.push_back(spec.machine.huge_pages.value_or(""));
    return absl::OkStatus();
  }
  absl::Status LoadSnapshot(const firecracker::SnapshotLoad& load, absl::Duration) override {
    int n;
    {
      absl::MutexLock lock(&world_->mu);
      n = ++world_->loads;
      world_->loads_resumed.push_back(load.resume_vm);
      world_->loads_tracked.push_back(load.track_dirty_pages.value_or(false));
      vcpus_running_ = load.resume_vm;
      world_->load_backends.push_back(load.backend);
    }
    RETURN_IF_ERROR(world_->load_gate.Wait());
    absl::MutexLock lock(&world_->mu);
    if (world_->fail_load_at == n) {
      // Firecracker exits after a failed load.
      ExitLocked(1);
      return world_->load_error;
    }
    return absl::OkStatus();
  }
  absl::Status CreateSnapshot(const firecracker::SnapshotCreate& create, absl::Duration) override {
    std::string format;
    bool fail = false;
    {
      absl::MutexLock lock(&world_->mu);
      format = world_->snapshot_format;
      world_->snapshot_types.push_back(create.type);
      fail = world_->fail_snapshot_at == static_cast<int>(world_->snapshot_types.size());
    }
    // A jailed Firecracker's paths are in its chroot.
    std::string root = jail_dir_.empty() ? "" : jail_dir_ + "/root";
    RETURN_IF_ERROR(WriteFileAtomic(root + create.snapshot_path, FakeVmstate(format), 0600));
    if (create.type == firecracker::SnapshotType::kDiff) {
      // Firecracker's Diff: the memory's size, one written page, holes.
      const std::string mem = root + create.mem_file_path;
      RETURN_IF_ERROR(WriteFileAtomic(mem, "", 0600));
      if (truncate(mem.c_str(), 64 << 10) < 0) return ErrnoError("truncate " + mem);
      int fd = open(mem.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0) return ErrnoError("open " + mem);
      std::string page(4096, 'd');
      ssize_t n = pwrite(fd, page.data(), page.size(), 8192);
      close(fd);
      if (n != 4096) return absl::InternalError("short write");
    } else {
      RETURN_IF_ERROR(WriteFileAtomic(root + create.mem_file_path, std::string(64 << 10, '\0'), 0600));
    }
    if (fail) return absl::InternalError("PUT /snapshot/create: injected failure");
    return absl::OkStatus();
  }
  absl::Status Pause() override {
    RETURN_IF_ERROR(CheckRunning());
    absl::MutexLock lock(&world_->mu);
    vcpus_running_ = false;
    return absl::OkStatus();
  }
  absl::Status Resume() override {
    RETURN_IF_ERROR(CheckRunning());
    absl::MutexLock lock(&world_->mu);
    ++world_->resumes;
    vcpus_running_ = true;
    return absl::OkStatus();
  }
  absl::Status PutMmds(absl::string_view json) override {
    RETURN_IF_ERROR(CheckRunning());
    absl::MutexLock lock(&world_->mu);
    world_->mmds[pid_] = std::string(json);
    if (vcpus_running_) ++world_->mmds_puts_while_running;
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> GetMmds() override {
    RETURN_IF_ERROR(CheckRunning());
    absl::MutexLock lock(&world_->mu);
    auto it = world_->mmds.find(pid_);
    return it == world_->mmds.end() ? std::string("{}") : it->second;
  }
  absl::Status CheckRunning() override {
    absl::MutexLock lock(&world_->mu);
    if (exit_.has_value()) return absl::UnavailableError(absl::StrCat("fake firecracker ", pid_, " exited"));
    return absl::OkStatus();
  }
  bool Terminate(absl::Duration) override {
    (void)Kill();
    return true;
  }
  absl::StatusOr<ExitStatus> Kill() override {
    absl::MutexLock lock(&world_->mu);
    if (!exit_.has_value()) {
      ++world_->kills;
      ExitLocked(-9);
    }
    if (!jail_dir_.empty()) {
      // Like Vmm::Kill: the jail goes with the process.
      (void)RemoveTree(jail_dir_);
      world_->jails.erase(jail_dir_.substr(jail_dir_.rfind('/') + 1));
    }
    return *exit_;
  }
  void Release() override {
    absl::MutexLock lock(&world_->mu);
    if (released_ || exit_.has_value()) return;
    released_ = true;
    ++world_->released;
    --world_->alive;
  }
  std::string RecentOutput() override { return ""; }

  absl::Status PlaceFile(const firecracker::JailFile& file) override {
    if (jail_dir_.empty()) return absl::FailedPreconditionError("not jailed");
    absl::MutexLock lock(&world_->mu);
    placed_.push_back(file.jail_path);
    return absl::OkStatus();
  }
  absl::Status UpdateLimits(const firecracker::CgroupLimits& limits) override {
    if (jail_dir_.empty()) return absl::FailedPreconditionError("not jailed");
    absl::MutexLock lock(&world_->mu);
    limits_ = limits;
    return absl::OkStatus();
  }
  absl::StatusOr<firecracker::CgroupLimits> ReadLimits() override {
    if (jail_dir_.empty()) return absl::FailedPreconditionError("not jailed");
    absl::MutexLock lock(&world_->mu);
    return limits_;
  }
  std::string cgroup_version() const override { return jail_dir_.empty() ? "" : "v1"; }
  void SetLimits(const firecracker::CgroupLimits& limits) {
    absl::MutexLock lock(&world_->mu);
    limits_ = limits;
  }

  // Exits on its own (or is killed: code -9).
  void Exit(int code) {
    absl::MutexLock lock(&world_->mu);
    ExitLocked(code);
  }

 private:
  void ExitLocked(int code) ABSL_EXCLUSIVE_LOCKS_REQUIRED(world_->mu) {
    if (exit_.has_value()) return;
    exit_ = code < 0 ? ExitStatus{true, -code, true} : ExitStatus{false, code, true};
    if (!released_) --world_->alive;
    uint64_t one = 1;
    (void)!write(exit_fd_.get(), &one, sizeof(one));
  }

  std::shared_ptr<FakeWorld> world_;
  const pid_t pid_;
  const std::string dir_;
  const std::string jail_dir_;
  UniqueFd exit_fd_;
  std::vector<std::string> placed_;   // under world_->mu
  firecracker::CgroupLimits limits_;  // under world_->mu
  bool released_ = false;
  bool vcpus_running_ = false;  // under world_->mu
  std::optional<ExitStatus> exit_;
};

class FakeVmmFactory final : public VmmFactory {
 public:
  explicit FakeVmmFactory(std::shared_ptr<FakeWorld> world) : world_(std::move(world)) {}

  absl::StatusOr<std::unique_ptr<Vmm>> Launch(const LaunchSpec& spec) override {
    RETURN_IF_ERROR(spec.cancel.Check());
    if (!spec.pooled) RETURN_IF_ERROR(world_->launch_gate.Wait(spec.cancel));
    {
      absl::MutexLock lock(&world_->mu);
      int n = ++world_->launches;
      if (spec.pooled) ++world_->pooled_launches;
      world_->launches_merged.push_back(spec.memory_merge);
      world_->launches_bind_mounts.push_back(spec.bind_mounts.size());
      if (world_->fail_launch_at == n) return absl::UnavailableError("fake firecracker exited at start");
    }
    RETURN_IF_ERROR(MakeDirs(spec.vm_dir, 0700));
    RETURN_IF_ERROR(WriteFileAtomic(spec.vm_dir + "/console.log", "", 0600));
    pid_t pid = g_next_pid.fetch_add(1);
    std::string jail_dir;
    {
      absl::MutexLock lock(&world_->mu);
      world_->pids.push_back(pid);
      if (world_->jailed != spec.jail.has_value()) {
        return absl::InternalError("fake: a launch whose jailing does not match the factory's");
      }
      if (spec.jail.has_value()) {
        if (spec.jail->uid == 0) return absl::InvalidArgumentError("fake: jailed as root");
        jail_dir = world_->jail_base + "/firecracker/" + spec.id;
        world_->jails.insert(spec.id);
        world_->uids[spec.id] = spec.jail->uid;
      }
    }
    if (!jail_dir.empty()) RETURN_IF_ERROR(MakeDirs(jail_dir + "/root", 0700));
    auto vmm = std::make_unique<FakeVmm>(world_, pid, spec.vm_dir, jail_dir);
    if (spec.jail.has_value()) vmm->SetLimits(spec.jail->limits);
    return vmm;
  }

  absl::StatusOr<std::unique_ptr<Vmm>> Adopt(pid_t pid, const std::string& vm_dir) override {
    {
      absl::MutexLock lock(&world_->mu);
      auto it = world_->running.find(pid);
      if (it == world_->running.end() || it->second != vm_dir) {
        return absl::NotFoundError(absl::StrCat("pid ", pid, " is not running"));
      }
      world_->running.erase(it);
    }
    return std::make_unique<FakeVmm>(world_, pid, vm_dir);
  }

  std::map<pid_t, std::string> FindRunning(const std::string&) override {
    absl::MutexLock lock(&world_->mu);
    return world_->running;
  }

  std::string version() const override {
    absl::MutexLock lock(&world_->mu);
    return world_->firecracker_version;
  }
  std::string snapshot_format() const override {
    absl::MutexLock lock(&world_->mu);
    return world_->snapshot_format;
  }

  bool jailed() const override {
    absl::MutexLock lock(&world_->mu);
    return world_->jailed;
  }
  std::string isolation() const override { return jailed() ? "jailer 1.7.0" : "none"; }
  absl::StatusOr<firecracker::JailPaths> JailFor(const std::string& id) const override {
    absl::MutexLock lock(&world_->mu);
    if (!world_->jailed) return absl::FailedPreconditionError("not jailed");
    firecracker::JailPaths p;
    p.jail_dir = world_->jail_base + "/firecracker/" + id;
    p.chroot_dir = p.jail_dir + "/root";
    return p;
  }
  absl::Status RemoveJail(const std::string& id) override {
    std::string dir;
    {
      absl::MutexLock lock(&world_->mu);
      dir = world_->jail_base + "/firecracker/" + id;
      world_->jails.erase(id);
    }
    return RemoveTree(dir);
  }
  std::vector<std::string> ListJails() override {
    absl::MutexLock lock(&world_->mu);
    return {world_->jails.begin(), world_->jails.end()};
  }

 private:
  std::shared_ptr<FakeWorld> world_;
};

class FakePageService final : public PageService {
 public:
  explicit FakePageService(std::shared_ptr<FakeWorld> world) : world_(std::move(world)) {}

  absl::StatusOr<uffd::ListenerId> AddListener(const uffd::ListenerSpec& spec,
                                               uffd::ClonePolicy* resolved) override {
    absl::MutexLock lock(&world_->mu);
    uffd::ClonePolicy p = spec.policy;
    const std::string& mem = spec.files.mem_file_path;
    if (p == uffd::ClonePolicy::kAuto) {
      if (world_->working_sets.count(mem) > 0) {
        p = uffd::ClonePolicy::kPrefetch;
      } else if (world_->recording.insert(mem).second) {
        p = uffd::ClonePolicy::kRecord;
      } else {
        p = uffd::ClonePolicy::kNone;
      }
    }
    if (resolved != nullptr) *resolved = p;
    ++world_->listeners;
    uffd::ListenerId id = next_++;
    recorders_[id] = p == uffd::ClonePolicy::kRecord ? mem : "";
    tags_[id] = spec.tag;
    return id;
  }
  absl::Status WaitPrefetchDone(uffd::ListenerId, absl::Time) override { return absl::OkStatus(); }
  absl::Status RemoveListener(uffd::ListenerId id) override {
    absl::MutexLock lock(&world_->mu);
    auto it = recorders_.find(id);
    if (it == recorders_.end()) return absl::NotFoundError("listener");
    // A recorder leaves its working set behind when its session ends.
    if (!it->second.empty()) world_->working_sets.insert(it->second);
    recorders_.erase(it);
    tags_.erase(id);
    --world_->listeners;
    return absl::OkStatus();
  }
  absl::Status DetachListener(uffd::ListenerId id) override {
    {
      absl::MutexLock lock(&world_->mu);
      ++world_->detached;
    }
    return RemoveListener(id);
  }
  absl::StatusOr<uffd::ListenerId> AdoptClone(const uffd::ListenerSpec& spec, const std::string& handshake,
                                              pid_t pid) override {
    absl::MutexLock lock(&world_->mu);
    if (world_->uffd_pids.count(pid) == 0)
      return absl::NotFoundError(absl::StrCat("pid ", pid, " has no userfaultfd"));
    world_->adopted_handshakes[pid] = handshake;
    ++world_->listeners;
    uffd::ListenerId id = next_++;
    recorders_[id] = "";
    tags_[id] = spec.tag;
    return id;
  }
  absl::Status Pin(const std::string& snapshot_id, const uffd::SnapshotFiles&) override {
    absl::MutexLock lock(&world_->mu);
    world_->pinned.insert(snapshot_id);
    return absl::OkStatus();
  }
  void Unpin(const std::string& snapshot_id) override {
    absl::MutexLock lock(&world_->mu);
    world_->pinned.erase(snapshot_id);
  }
  uint64_t WorkingSetPages(const std::string&, const uffd::SnapshotFiles&) override {
    absl::MutexLock lock(&world_->mu);
    return world_->working_set_pages;
  }
  uffd::ServerStats GetStats() override {
    absl::MutexLock lock(&world_->mu);
    uffd::ServerStats out;
    for (const auto& [id, tag] : tags_) {
      uffd::ListenerStats l;
      l.id = id;
      l.tag = tag;
      l.sessions_active = 1;
      auto f = world_->faults_by_tag.find(tag);
      if (f != world_->faults_by_tag.end()) l.stats.faults = f->second;
      out.listeners.push_back(std::move(l));
    }
    out.total = world_->pager_total;
    return out;
  }
  void SetEventCallback(std::function<void(const uffd::SessionEvent&)> callback) override {
    absl::MutexLock lock(&world_->mu);
    world_->pager_events = std::move(callback);
  }
  void Stop() override {}

 private:
  std::shared_ptr<FakeWorld> world_;
  uffd::ListenerId next_ = 1;
  std::map<uffd::ListenerId, std::string> recorders_;  // under world_->mu
  std::map<uffd::ListenerId, std::string> tags_;       // under world_->mu
};

class FakeNetwork final : public NetworkService {
 public:
  explicit FakeNetwork(std::shared_ptr<FakeWorld> world) : world_(std::move(world)) {}
  absl::Status Available() const override {
    absl::MutexLock lock(&world_->mu);
    if (world_->network_available) return absl::OkStatus();
    return absl::UnavailableError("VM networking is not available on this host: fake");
  }
  absl::StatusOr<VmNetworkInfo> Setup(const std::string& vm_id, const std::vector<PortMapping>&,
                                      uint32_t tap_owner) override {
    RETURN_IF_ERROR(Available());
    absl::MutexLock lock(&world_->mu);
    world_->networks.insert(vm_id);
    world_->tap_owners[vm_id] = tap_owner;
    VmNetworkInfo n;
    n.netns = UniqueFd(eventfd(0, EFD_CLOEXEC));
    n.netns_name = "fake-" + vm_id;
    n.tap = "tap0";
    n.guest_ip = "172.16.0.2";
    n.host_ip = absl::StrCat("10.200.0.", world_->networks.size() * 4 + 2);
    return n;
  }
  absl::Status Teardown(const std::string& vm_id) override {
    absl::MutexLock lock(&world_->mu);
    world_->networks.erase(vm_id);
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<std::string>> ReconcileOrphans(
      const absl::flat_hash_set<std::string>& live) override {
    absl::MutexLock lock(&world_->mu);
    std::vector<std::string> removed;
    for (auto it = world_->networks.begin(); it != world_->networks.end();) {
      if (live.contains(*it)) {
        ++it;
      } else {
        removed.push_back(*it);
        it = world_->networks.erase(it);
      }
    }
    return removed;
  }
  absl::Status RemoveHostRules() override { return absl::OkStatus(); }

 private:
  std::shared_ptr<FakeWorld> world_;
};

class FakeHost final : public Host {
 public:
  explicit FakeHost(std::shared_ptr<FakeWorld> world) : world_(std::move(world)) {}
  absl::StatusOr<uint64_t> MemAvailableMib() override {
    absl::MutexLock lock(&world_->mu);
    return world_->mem_available_mib;
  }
  absl::StatusOr<HugePagePool> HugePagePoolOf(uint64_t page_size) override {
    absl::MutexLock lock(&world_->mu);
    if (!world_->huge_pool.has_value() || world_->huge_pool->page_size != page_size) {
      return absl::NotFoundError(absl::StrCat("no hugetlb pool of ", page_size >> 10, " KiB pages"));
    }
    return *world_->huge_pool;
  }
  absl::StatusOr<uint64_t> AllocatedBytes(const std::string& path) override {
    return storage::AllocatedBytes(path);
  }
  absl::Status CheckFreeSpace(const std::string& dir, uint64_t need, absl::string_view what) override {
    return storage::CheckFreeSpace(dir, need, what);
  }
  bool reflinks() const override { return false; }
  absl::Status CopyDisk(const std::string& src, const std::string& dst, const CancelToken& cancel) override {
    {
      absl::MutexLock lock(&world_->mu);
      ++world_->disk_copies;
    }
    RETURN_IF_ERROR(world_->copy_gate.Wait(cancel));
    return storage::CopyDisk(src, dst, {.durable = false, .mode = 0600, .cancel = cancel}).status();
  }
  absl::Status WriteRecord(const std::string& path, absl::string_view contents) override {
    {
      absl::MutexLock lock(&world_->mu);
      if (world_->fail_records) {
        return absl::ResourceExhaustedError(absl::StrCat("write ", path, ": No space left on device"));
      }
    }
    return WriteFileAtomic(path, contents, 0600, /*durable=*/false);
  }
  absl::StatusOr<firecracker::SnapshotHost> Describe() override {
    absl::MutexLock lock(&world_->mu);
    return world_->host;
  }
  absl::StatusOr<ProcessUsage> ReadProcessUsage(pid_t pid, bool pss) override {
    absl::MutexLock lock(&world_->mu);
    ++world_->usage_reads;
    if (pss) ++world_->pss_reads;
    auto it = world_->process_usage.find(pid);
    ProcessUsage u = it != world_->process_usage.end() ? it->second : world_->default_usage;
    if (!pss) u.pss_bytes.reset();
    return u;
  }

 private:
  std::shared_ptr<FakeWorld> world_;
};

}  // namespace

Env MakeFakeEnv(const std::shared_ptr<FakeWorld>& world) {
  Env env;
  env.vmms = std::make_unique<FakeVmmFactory>(world);
  env.pager = std::make_unique<FakePageService>(world);
  env.network = std::make_unique<FakeNetwork>(world);
  env.host = std::make_unique<FakeHost>(world);
  return env;
}

bool ExitFakeProcess(pid_t pid, int code) {
  absl::MutexLock lock(&g_processes_mu);
  auto it = Processes().find(pid);
  if (it == Processes().end()) return false;
  it->second->Exit(code);
  return true;
}

}  // namespace fcvm::vm::testing
