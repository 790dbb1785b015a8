#include "lib/vm/manager.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <optional>
#include <set>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "lib/base/file_util.h"
#include "lib/base/logging.h"
#include "lib/base/names.h"
#include "lib/base/pidfd.h"
#include "lib/base/process.h"
#include "lib/base/status.h"
#include "lib/firecracker/vmm.h"
#include "lib/net/network_manager.h"
#include "lib/storage/disk.h"
#include "lib/storage/snapshot_store.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace fcvm::vm {

using json = nlohmann::json;

namespace {

// How long the warm-pool refiller waits for running restores to finish.
constexpr absl::Duration kRefillHoldBack = absl::Milliseconds(200);

// One VM. `op_mu` serialises operations on it; `info` and the resource
// handles are read under Impl::mu_ for listing, and changed under both.
struct VmEntry {
  absl::Mutex op_mu;
  VmInfo info;
  std::string dir;
  std::unique_ptr<firecracker::Vmm> vmm;                // VMs this fcvmd started
  std::optional<Process> adopted;                       // VMs re-adopted after a restart
  std::unique_ptr<firecracker::ApiClient> adopted_api;  // their API
  std::optional<uffd::ListenerId> listener;
  uint64_t watch_token = 0;
  bool deleting = false;
};

uffd::ClonePolicy ToUffdPolicy(PrefetchPolicy p) {
  switch (p) {
    case PrefetchPolicy::kNone:
      return uffd::ClonePolicy::kNone;
    case PrefetchPolicy::kRecord:
      return uffd::ClonePolicy::kRecord;
    case PrefetchPolicy::kPrefetch:
      return uffd::ClonePolicy::kPrefetch;
    case PrefetchPolicy::kAuto:
      return uffd::ClonePolicy::kAuto;
  }
  return uffd::ClonePolicy::kAuto;
}

absl::StatusOr<uint64_t> MemAvailableMib() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib / 1024;
  }
  return absl::UnavailableError("cannot read MemAvailable from /proc/meminfo");
}

bool MatchesLabels(const std::map<std::string, std::string>& labels,
                   const std::map<std::string, std::string>& selector) {
  for (const auto& [k, v] : selector) {
    auto it = labels.find(k);
    if (it == labels.end() || it->second != v) return false;
  }
  return true;
}

std::string InfoToJson(const VmInfo& v) {
  json j;
  j["id"] = v.id;
  j["name"] = v.name;
  j["labels"] = v.labels;
  j["state"] = std::string(StateName(v.state));
  j["config"] = json::parse(ConfigToJson(v.config));
  j["snapshot_id"] = v.snapshot_id;
  j["memory_backend"] = MemoryBackendName(v.memory_backend);
  j["prefetch_policy"] = PrefetchPolicyName(v.prefetch_policy);
  j["pid"] = v.pid;
  j["console_log_path"] = v.console_log_path;
  j["created_at_unix_ns"] = absl::ToUnixNanos(v.created_at);
  j["error"] = v.error;
  j["network"] = {{"netns", v.network.netns},
                  {"tap", v.network.tap},
                  {"guest_ip", v.network.guest_ip},
                  {"host_ip", v.network.host_ip},
                  {"guest_mac", v.network.guest_mac}};
  return j.dump(2);
}

absl::StatusOr<VmInfo> InfoFromJson(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::DataLossError("vm record is not a JSON object");
  VmInfo v;
  try {
    v.id = j.at("id").get<std::string>();
    v.name = j.value("name", v.id);
    v.labels = j.value("labels", std::map<std::string, std::string>{});
    if (!ParseState(j.value("state", "failed"), &v.state)) v.state = VmState::kFailed;
    ASSIGN_OR_RETURN(v.config, ConfigFromJson(j.contains("config") ? j["config"].dump() : "{}"));
    v.snapshot_id = j.value("snapshot_id", "");
    v.memory_backend =
        j.value("memory_backend", "uffd") == "file" ? MemoryBackend::kFile : MemoryBackend::kUffd;
    std::string policy = j.value("prefetch_policy", "auto");
    for (PrefetchPolicy p :
         {PrefetchPolicy::kNone, PrefetchPolicy::kRecord, PrefetchPolicy::kPrefetch, PrefetchPolicy::kAuto}) {
      if (policy == PrefetchPolicyName(p)) v.prefetch_policy = p;
    }
    v.pid = j.value("pid", 0);
    v.console_log_path = j.value("console_log_path", "");
    v.created_at = absl::FromUnixNanos(j.value("created_at_unix_ns", int64_t{0}));
    v.error = j.value("error", "");
    if (j.contains("network")) {
      const json& n = j["network"];
      v.network.netns = n.value("netns", "");
      v.network.tap = n.value("tap", "");
      v.network.guest_ip = n.value("guest_ip", "");
      v.network.host_ip = n.value("host_ip", "");
      v.network.guest_mac = n.value("guest_mac", "");
    }
  } catch (const json::exception& e) {
    return absl::DataLossError(absl::StrCat("vm record: ", e.what()));
  }
  return v;
}

}  // namespace

struct Manager::Impl {
  ManagerOptions options;
  std::string vms_dir;
  std::string drives_dir;  // the fixed path every VM's drives appear under
  std::optional<firecracker::FirecrackerBinary> binary;
  std::string fc_version;
  std::unique_ptr<storage::SnapshotStore> store;
  std::unique_ptr<uffd::PageServer> pager;
  std::unique_ptr<net::NetworkManager> network;
  std::string network_error;  // why `network` is null

  mutable absl::Mutex mu;
  std::map<std::string, std::shared_ptr<VmEntry>> vms ABSL_GUARDED_BY(mu);
  std::map<std::string, std::string> pager_errors ABSL_GUARDED_BY(mu);  // vm id -> why its session ended
  std::map<uint64_t, std::function<void(const Event&)>> subscribers ABSL_GUARDED_BY(mu);
  uint64_t next_token ABSL_GUARDED_BY(mu) = 1;
  std::map<uint64_t, std::string> watched ABSL_GUARDED_BY(mu);  // watch token -> vm id
  std::set<std::string> pending_names ABSL_GUARDED_BY(mu);
  // Snapshot id -> the page server's view of its memory, kept from its first
  // UFFD clone until it is deleted: later clones find the mapping, zero map
  // and working set ready even when no other clone is alive.
  std::map<std::string, std::shared_ptr<uffd::SnapshotMemory>> pinned ABSL_GUARDED_BY(mu);
  // Whether the state directory's file system reflinks (probed at start):
  // private disk copies then take no space up front.
  bool reflink = false;
  // OnExit handlers still running (detached threads); the destructor waits.
  int exit_handlers ABSL_GUARDED_BY(mu) = 0;

  // Warm pool: ready Firecracker processes, each with its VM id and
  // directory already made (its drives directory is bind-mounted, so the
  // drives can be put in place after the process started).
  struct Warm {
    std::string id;
    std::string dir;
    std::unique_ptr<firecracker::Vmm> vmm;
  };
  absl::Mutex warm_mu;
  std::deque<Warm> warm ABSL_GUARDED_BY(warm_mu);
  std::thread refiller;
  // Clones being restored right now. The refiller holds back while this is
  // not zero (up to kRefillHoldBack): starting a Firecracker takes a core
  // for several milliseconds, which the restore needs more.
  std::atomic<int> restoring{0};

  // Exit watcher: epoll over every VM's pidfd.
  UniqueFd epoll;
  UniqueFd wake;
  std::thread watcher;
  std::atomic<bool> stopping{false};

  // --- helpers ---------------------------------------------------------

  void Emit(Event event) {
    event.time = absl::Now();
    std::vector<std::function<void(const Event&)>> subs;
    {
      absl::MutexLock lock(&mu);
      for (auto& [token, cb] : subscribers) subs.push_back(cb);
    }
    for (auto& cb : subs) cb(event);
  }

  // Not fsynced: a VM record only matters while the host stays up (no VM
  // survives a reboot), and an fcvmd crash does not lose the page cache.
  void Persist(const VmInfo& info, const std::string& dir) {
    if (absl::Status st = WriteFileAtomic(dir + "/vm.json", InfoToJson(info), 0600, /*durable=*/false);
        !st.ok()) {
      spdlog::warn("vm {}: cannot persist its record: {}", info.id, st);
    }
  }

  // Changes a VM's state (checked against the table), persists and emits.
  absl::Status SetState(VmEntry& e, VmState to, absl::string_view verb, std::string message = "") {
    VmState from;
    VmInfo copy;
    {
      absl::MutexLock lock(&mu);
      from = e.info.state;
      if (from == to) return absl::OkStatus();
      RETURN_IF_ERROR(CheckTransition(e.info.id, from, to, verb));
      e.info.state = to;
      if (!message.empty()) e.info.error = message;
      copy = e.info;
    }
    Persist(copy, e.dir);
    Event ev;
    ev.kind = EventKind::kVmState;
    ev.vm_id = copy.id;
    ev.snapshot_id = copy.snapshot_id;
    ev.state = to;
    ev.previous_state = from;
    ev.message = message;
    Emit(ev);
    return absl::OkStatus();
  }

  absl::StatusOr<std::shared_ptr<VmEntry>> Find(const std::string& ref) const {
    absl::MutexLock lock(&mu);
    auto it = vms.find(ref);
    if (it != vms.end()) return it->second;
    for (const auto& [id, e] : vms) {
      if (e->info.name == ref) return e;
    }
    return absl::NotFoundError(absl::StrCat("vm '", ref, "' not found"));
  }

  absl::Status RequireBinary() const {
    if (!binary.has_value()) {
      return absl::UnavailableError(
          "no Firecracker binary configured: start fcvmd with --firecracker PATH or FCVM_FIRECRACKER_BIN");
    }
    return absl::OkStatus();
  }

  // Reserves a unique VM name (released by ReleaseName once the VM is in the
  // registry or has failed).
  absl::Status ReserveName(const std::string& name) {
    RETURN_IF_ERROR(ValidateName("vm name", name));
    absl::MutexLock lock(&mu);
    for (const auto& [id, e] : vms) {
      if (e->info.name == name)
        return absl::AlreadyExistsError(absl::StrCat("vm name '", name, "' is taken"));
    }
    if (!pending_names.insert(name).second) {
      return absl::AlreadyExistsError(absl::StrCat("vm name '", name, "' is being created"));
    }
    return absl::OkStatus();
  }
  void ReleaseName(const std::string& name) {
    absl::MutexLock lock(&mu);
    pending_names.erase(name);
  }

  // Refuses up front, with ResourceExhausted, `count` VMs whose private disk
  // copies would not fit in the state directory (sparse copies take each
  // source's allocated size; reflinks take nothing up front).
  absl::Status CheckDiskForCopies(const VmConfig& config,
                                  const std::function<std::string(const DriveConfig&)>& source,
                                  uint32_t count, absl::string_view what) const {
    if (reflink) return absl::OkStatus();
    uint64_t need = 0;
    for (const DriveConfig& d : config.drives) {
      if (d.read_only) continue;
      absl::StatusOr<uint64_t> bytes = storage::AllocatedBytes(source(d));
      if (bytes.ok()) need += *bytes;  // a missing file is reported by the copy, naming it
    }
    if (need == 0) return absl::OkStatus();
    return storage::CheckFreeSpace(vms_dir, need * count, what);
  }

  absl::Status CheckMemory(uint64_t mib, uint32_t count) const {
    absl::StatusOr<uint64_t> avail = MemAvailableMib();
    if (!avail.ok()) return absl::OkStatus();  // cannot tell: let the kernel decide
    uint64_t need = mib * count;
    if (need > *avail) {
      return absl::ResourceExhaustedError(
          absl::StrCat("not enough memory: ", count, " x ", mib, " MiB wanted, ", *avail, " MiB available"));
    }
    return absl::OkStatus();
  }

  // The VM's private drive directory: writable drives are copies, read-only
  // ones symlinks to the shared image.
  absl::Status PrepareDrives(const std::string& vm_dir, const VmConfig& config,
                             const std::function<std::string(const DriveConfig&)>& writable_source) {
    std::string dir = vm_dir + "/drives";
    RETURN_IF_ERROR(MakeDirs(dir, 0700));
    for (const DriveConfig& d : config.drives) {
      std::string dst = dir + "/" + d.drive_id;
      if (d.read_only) {
        if (symlink(d.path.c_str(), dst.c_str()) < 0) return ErrnoError(absl::StrCat("symlink ", dst));
        continue;
      }
      RETURN_IF_ERROR(Annotate(storage::CopyDisk(writable_source(d), dst, /*durable=*/false).status(),
                               absl::StrCat("drive ", d.drive_id)));
    }
    return absl::OkStatus();
  }

  firecracker::VmmOptions VmmOptionsFor(const std::string& id, const std::string& dir) const {
    firecracker::VmmOptions o;
    o.vm_dir = dir;
    o.id = id;
    o.console_max_bytes = options.console_max_bytes;
    o.start_timeout = options.clone_timeout;
    o.bind_mounts = {{dir + "/drives", drives_dir, false}};
    o.new_mount_namespace = true;
    return o;
  }

  std::vector<firecracker::Drive> FirecrackerDrives(const VmConfig& config) const {
    std::vector<firecracker::Drive> out;
    for (const DriveConfig& d : config.drives) {
      firecracker::Drive fd;
      fd.drive_id = d.drive_id;
      fd.path_on_host = drives_dir + "/" + d.drive_id;
      fd.is_root_device = d.is_root_device;
      fd.is_read_only = d.read_only;
      out.push_back(fd);
    }
    return out;
  }

  void Watch(const std::shared_ptr<VmEntry>& e, int pidfd) {
    uint64_t token;
    {
      absl::MutexLock lock(&mu);
      token = next_token++;
      watched[token] = e->info.id;
      e->watch_token = token;
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = token;
    if (epoll_ctl(epoll.get(), EPOLL_CTL_ADD, pidfd, &ev) < 0) {
      spdlog::warn("vm {}: cannot watch its process: {}", e->info.id, ErrnoError("epoll_ctl").message());
    }
  }

  void Unwatch(VmEntry& e, int pidfd) {
    if (pidfd >= 0) epoll_ctl(epoll.get(), EPOLL_CTL_DEL, pidfd, nullptr);
    absl::MutexLock lock(&mu);
    watched.erase(e.watch_token);
    e.watch_token = 0;
  }

  int PidfdOf(const VmEntry& e) const {
    if (e.vmm) return e.vmm->pidfd();
    if (e.adopted.has_value()) return e.adopted->pidfd();
    return -1;
  }

  firecracker::ApiClient* Api(VmEntry& e) {
    if (e.vmm) return &e.vmm->api();
    return e.adopted_api.get();
  }

  // Releases a VM's process, page-server session; leaves its directory.
  void ReleaseResources(VmEntry& e) {
    Unwatch(e, PidfdOf(e));
    if (e.listener.has_value()) {
      (void)pager->RemoveListener(*e.listener);
      e.listener.reset();
    }
    if (e.vmm) {
      (void)e.vmm->Kill();
      e.vmm.reset();
    }
    if (e.adopted.has_value()) {
      (void)e.adopted->Kill();
      e.adopted.reset();
      e.adopted_api.reset();
    }
    if (!e.info.network.netns.empty() && network != nullptr) {
      if (absl::Status st = network->Teardown(e.info.id); !st.ok()) {
        spdlog::warn("vm {}: network teardown: {}", e.info.id, st);
      }
    }
    absl::MutexLock lock(&mu);
    e.info.pid = 0;
    e.info.network = NetworkStatus{};
  }

  // The watcher thread: a VM whose Firecracker exits while nobody asked for
  // it is marked stopped (exit 0) or failed, and its resources released.
  void WatchLoop() {
    epoll_event events[16];
    while (!stopping.load()) {
      int n = epoll_wait(epoll.get(), events, 16, -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        spdlog::error("vm watcher: {}", ErrnoError("epoll_wait").message());
        return;
      }
      for (int i = 0; i < n; ++i) {
        if (events[i].data.u64 == 0) continue;  // wake-up
        std::string id;
        {
          absl::MutexLock lock(&mu);
          auto it = watched.find(events[i].data.u64);
          if (it == watched.end()) continue;
          id = it->second;
          watched.erase(it);
        }
        {
          absl::MutexLock lock(&mu);
          ++exit_handlers;
        }
        std::thread([this, id] {
          OnExit(id);
          absl::MutexLock lock(&mu);
          --exit_handlers;
        }).detach();
      }
    }
  }

  void OnExit(const std::string& id) {
    absl::StatusOr<std::shared_ptr<VmEntry>> found = Find(id);
    if (!found.ok()) return;
    std::shared_ptr<VmEntry> e = *found;
    absl::MutexLock op(&e->op_mu);
    if (e->deleting) return;
    std::string why;
    ExitStatus exit;
    if (e->vmm) {
      std::string recent = e->vmm->RecentOutput();
      absl::StatusOr<ExitStatus> st = e->vmm->Kill();
      if (st.ok()) exit = *st;
      why = absl::StrCat("firecracker ", exit.ToString());
      if (!recent.empty()) absl::StrAppend(&why, "; last output: ", recent);
    } else {
      why = "firecracker exited";
    }
    {
      absl::MutexLock lock(&mu);
      auto it = pager_errors.find(id);
      if (it != pager_errors.end()) {
        why = absl::StrCat("page server dropped the clone: ", it->second, "; ", why);
        pager_errors.erase(it);
      }
    }
    ReleaseResources(*e);
    VmState to = exit.success() ? VmState::kStopped : VmState::kFailed;
    spdlog::warn("vm {}: {}", id, why);
    (void)SetState(*e, to, "stop", why);
  }

  void OnPagerEvent(const uffd::SessionEvent& ev) {
    if (ev.kind != uffd::SessionEventKind::kFailed && ev.kind != uffd::SessionEventKind::kRejected) return;
    {
      absl::MutexLock lock(&mu);
      pager_errors[ev.tag] = std::string(ev.status.message());
    }
    Event out;
    out.kind = EventKind::kPageServerDrop;
    out.vm_id = ev.tag;
    out.message = absl::StrCat("page server ", uffd::SessionEventKindName(ev.kind), ": ", ev.status.message(),
                               ev.peer_killed ? " (firecracker killed)" : "");
    Emit(out);
  }

  VmInfo Snapshot(const VmEntry& e) const {
    absl::MutexLock lock(&mu);
    return e.info;
  }

  // Keeps the warm pool full until `stopping`. Runs on its own thread, which
  // is also the parent-death thread of the pooled processes.
  void RefillLoop() {
    while (!stopping.load()) {
      bool full;
      {
        absl::MutexLock lock(&warm_mu);
        full = warm.size() >= options.warm_pool_size;
        if (full) {
          warm_mu.AwaitWithTimeout(absl::Condition(
                                       +[](Impl* m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(m->warm_mu) {
                                         return m->stopping.load() ||
                                                m->warm.size() < m->options.warm_pool_size;
                                       },
                                       this),
                                   absl::Seconds(1));
          continue;
        }
      }
      // Hold back while clones are being restored, but not forever: under a
      // steady stream of clones the pool must still refill. Polled, not
      // awaited on warm_mu: a version that woke the instant a restore ended
      // (so launched on top of the reply to the client) measured 17.7 / 18.1
      // ms single-clone p50 against this one's 12.9 / 12.6 in one A/B of
      // fcvm-clone-bench; the host's noise was later seen near that size, so
      // the measured-good version stays.
      for (absl::Time until = absl::Now() + kRefillHoldBack;
           restoring.load() > 0 && !stopping.load() && absl::Now() < until;) {
        absl::SleepFor(absl::Milliseconds(1));
      }
      Warm w;
      w.id = NewId("vm");
      w.dir = vms_dir + "/" + w.id;
      absl::Status st = MakeDirs(w.dir + "/drives", 0700);
      if (st.ok()) {
        firecracker::VmmOptions o = VmmOptionsFor(w.id, w.dir);
        o.parent_death_signal = SIGKILL;
        absl::StatusOr<std::unique_ptr<firecracker::Vmm>> vmm = firecracker::Vmm::Launch(*binary, o);
        if (vmm.ok()) {
          w.vmm = *std::move(vmm);
        } else {
          st = vmm.status();
        }
      }
      if (!st.ok()) {
        spdlog::warn("warm pool: cannot start a firecracker: {}", st);
        (void)RemoveTree(w.dir);
        absl::SleepFor(absl::Seconds(1));
        continue;
      }
      absl::MutexLock lock(&warm_mu);
      warm.push_back(std::move(w));
    }
  }

  // A pooled process that is still alive, or nullopt.
  std::optional<Warm> TakeWarm() {
    while (true) {
      Warm w;
      {
        absl::MutexLock lock(&warm_mu);
        if (warm.empty()) return std::nullopt;
        w = std::move(warm.front());
        warm.pop_front();
      }
      if (w.vmm->CheckRunning().ok()) return w;
      (void)w.vmm->Kill();
      (void)RemoveTree(w.dir);
    }
  }

  void DrainWarmPool() {
    std::deque<Warm> left;
    {
      absl::MutexLock lock(&warm_mu);
      left.swap(warm);
    }
    for (Warm& w : left) {
      (void)w.vmm->Kill();
      (void)RemoveTree(w.dir);
    }
  }

  // Gives `e` a Firecracker and its drives. A warm-pool process is used when
  // one is ready (its id and directory become the VM's); otherwise a fresh
  // process starts while the drives are copied, in parallel.
  // A VM with a network (netns_fd >= 0) needs a process started inside its
  // namespace, so it never takes a pooled one.
  absl::Status AttachProcessAndDrives(VmEntry& e, const VmConfig& config,
                                      const std::function<std::string(const DriveConfig&)>& source,
                                      int netns_fd = -1) {
    std::optional<Warm> w;
    if (netns_fd < 0) w = TakeWarm();
    if (w.has_value()) {
      e.info.id = w->id;
      e.dir = w->dir;
      e.vmm = std::move(w->vmm);
      e.info.timings.from_warm_pool = true;
      absl::Time t = absl::Now();
      RETURN_IF_ERROR(PrepareDrives(e.dir, config, source));
      e.info.timings.disks = absl::Now() - t;
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(MakeDirs(e.dir + "/drives", 0700));
    absl::StatusOr<std::unique_ptr<firecracker::Vmm>> launched;
    firecracker::VmmOptions vo = VmmOptionsFor(e.info.id, e.dir);
    vo.netns_fd = netns_fd;
    std::thread launcher([&] { launched = firecracker::Vmm::Launch(*binary, vo); });
    absl::Time t = absl::Now();
    absl::Status drives = PrepareDrives(e.dir, config, source);
    e.info.timings.disks = absl::Now() - t;
    launcher.join();
    if (!launched.ok()) return launched.status();
    e.vmm = *std::move(launched);
    e.info.timings.process_ready = e.vmm->startup_time();
    return drives;
  }

  // Creates the VM's network namespace, tap, veth and rules.
  absl::StatusOr<net::VmNetwork> SetupNetwork(const std::string& id,
                                              const std::vector<PortMapping>& publish) {
    if (network == nullptr) {
      return absl::UnavailableError(
          absl::StrCat("VM networking is not available on this host: ", network_error));
    }
    RETURN_IF_ERROR(ValidatePublish(publish));
    std::vector<net::PublishedPort> ports;
    for (const PortMapping& p : publish) {
      ports.push_back(
          {p.protocol == "udp" ? net::Protocol::kUdp : net::Protocol::kTcp, p.host_port, p.guest_port});
    }
    absl::StatusOr<net::VmNetwork> n = network->Setup(id, ports);
    if (!n.ok()) return Annotate(n.status(), "network");
    return n;
  }

  static NetworkStatus StatusOf(const net::VmNetwork& n, const std::string& guest_mac,
                                const std::vector<PortMapping>& publish) {
    NetworkStatus s;
    s.netns = n.netns_name;
    s.tap = n.tap_name;
    s.guest_ip = n.guest_ip.ToString();
    s.host_ip = n.vm_ip.ToString();
    s.guest_mac = guest_mac;
    s.publish = publish;
    return s;
  }

  SnapshotInfo ToSnapshotInfo(const storage::SnapshotRecord& r) const;
  absl::StatusOr<VmInfo> CloneOne(const storage::SnapshotRecord& snap, const VmConfig& config,
                                  const CloneRequest& req, const std::string& name);
  absl::StatusOr<VmInfo> SetPaused(const std::string& ref, bool paused);
  absl::StatusOr<DeleteResult> DeleteEntry(const std::shared_ptr<VmEntry>& e, bool force,
                                           absl::Duration grace);
  void Reconcile();
};

SnapshotInfo Manager::Impl::ToSnapshotInfo(const storage::SnapshotRecord& r) const {
  SnapshotInfo s;
  s.id = r.id;
  s.name = r.name;
  s.labels = r.labels;
  s.source_vm_id = r.source_vm_id;
  s.config = ConfigFromJson(r.config_json).value_or(VmConfig{});
  s.firecracker_version = r.firecracker_version;
  s.memory_bytes = r.memory_bytes;
  s.vmstate_bytes = r.vmstate_bytes;
  s.vmstate_sha256 = r.vmstate_sha256;
  s.memory_sha256 = r.memory_sha256;
  s.created_at = r.created_at;
  s.create_duration = r.create_duration;
  s.path = store->Dir(r.id);
  {
    absl::MutexLock lock(&mu);
    for (const auto& [id, e] : vms) {
      if (e->info.snapshot_id == r.id &&
          (e->info.state == VmState::kRunning || e->info.state == VmState::kPaused ||
           e->info.state == VmState::kCreating)) {
        ++s.clone_count;
      }
    }
  }
  std::string mem = storage::SnapshotStore::MemoryPath(s.path);
  for (const uffd::SnapshotStats& st : pager->GetStats().snapshots) {
    if (st.mem_file == mem) s.zero_pages = st.zero_pages;
  }
  return s;
}

Manager::Manager(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Manager::~Manager() {
  Impl& m = *impl_;
  m.stopping = true;
  uint64_t one = 1;
  if (write(m.wake.get(), &one, sizeof(one)) < 0) spdlog::warn("vm watcher: wake-up failed");
  if (m.watcher.joinable()) m.watcher.join();
  {
    absl::MutexLock lock(&m.mu);
    m.mu.Await(absl::Condition(
        +[](int* n) { return *n == 0; }, &m.exit_handlers));
  }
  std::map<std::string, std::shared_ptr<VmEntry>> vms;
  {
    absl::MutexLock lock(&m.mu);
    vms = m.vms;
  }
  bool networks_left = false;
  for (auto& [id, e] : vms) {
    absl::MutexLock op(&e->op_mu);
    if (e->listener.has_value() || e->info.timings.from_warm_pool) {
      // Nobody will serve this clone's faults once we are gone; a pooled
      // process dies with its parent-death thread anyway.
      spdlog::info("vm {}: stopping (it cannot outlive this fcvmd)", id);
      e->deleting = true;
      m.ReleaseResources(*e);
      VmInfo info = m.Snapshot(*e);
      info.state = VmState::kStopped;
      info.error = e->listener.has_value() ? "fcvmd stopped; its page server served this clone"
                                           : "fcvmd stopped; the VM ran in a warm-pool process";
      m.Persist(info, e->dir);
    } else if (e->vmm) {
      // Leave it running for the next fcvmd to re-adopt.
      spdlog::info("vm {}: left running (pid {}) for re-adoption", id, e->vmm->pid());
      e->vmm->Detach();
      e->vmm.reset();
      networks_left |= !e->info.network.netns.empty();
    } else if (e->adopted.has_value()) {
      e->adopted->Release();
      e->adopted.reset();
      networks_left |= !e->info.network.netns.empty();
    }
  }
  // The shared host rules go with the last VM network (the next fcvmd puts
  // them back at start).
  if (m.network != nullptr && !networks_left) {
    if (absl::Status st = m.network->RemoveHostRules(); !st.ok()) spdlog::warn("network: {}", st);
  }
  {
    absl::MutexLock lock(&m.warm_mu);  // wakes the refiller's Await
  }
  if (m.refiller.joinable()) m.refiller.join();
  m.DrainWarmPool();
  if (m.pager) m.pager->Stop();
}

absl::StatusOr<std::unique_ptr<Manager>> Manager::Create(const ManagerOptions& options) {
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.options = options;
  if (options.state_dir.empty() || options.state_dir[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("state dir must be an absolute path, got '", options.state_dir, "'"));
  }
  m.vms_dir = options.state_dir + "/vms";
  m.drives_dir = options.state_dir + "/drives";
  RETURN_IF_ERROR(MakeDirs(m.vms_dir, 0700));
  RETURN_IF_ERROR(MakeDirs(m.drives_dir, 0700));
  m.reflink = storage::SupportsReflink(m.vms_dir);
  if (!options.firecracker_bin.empty()) {
    ASSIGN_OR_RETURN(firecracker::FirecrackerBinary bin,
                     firecracker::FirecrackerBinary::Probe(options.firecracker_bin));
    m.binary = std::move(bin);
    m.fc_version = m.binary->version().ToString();
  }
  ASSIGN_OR_RETURN(m.store, storage::SnapshotStore::Open(options.state_dir + "/snapshots"));
  ASSIGN_OR_RETURN(m.pager, uffd::PageServer::Create({.threads = options.page_server_threads}));
  if (options.networking) {
    net::NetworkOptions no;
    no.state_dir = options.state_dir + "/net";
    no.pool_cidr = options.network_pool;
    no.uplink = options.network_uplink;
    no.name_prefix = options.network_prefix;
    absl::StatusOr<std::unique_ptr<net::NetworkManager>> nm = net::NetworkManager::Create(no);
    if (nm.ok()) {
      m.network = *std::move(nm);
    } else {
      m.network_error = std::string(nm.status().message());
      spdlog::warn("VM networking unavailable: {}", nm.status());
    }
  } else {
    m.network_error = "turned off";
  }
  Impl* raw = impl.get();
  m.pager->SetEventCallback([raw](const uffd::SessionEvent& ev) { raw->OnPagerEvent(ev); });
  m.epoll = UniqueFd(epoll_create1(EPOLL_CLOEXEC));
  if (!m.epoll) return ErrnoError("epoll_create1");
  m.wake = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!m.wake) return ErrnoError("eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;
  if (epoll_ctl(m.epoll.get(), EPOLL_CTL_ADD, m.wake.get(), &ev) < 0) return ErrnoError("epoll_ctl");
  if (options.reconcile) m.Reconcile();
  m.watcher = std::thread([raw] { raw->WatchLoop(); });
  if (m.binary.has_value() && options.warm_pool_size > 0)
    m.refiller = std::thread([raw] { raw->RefillLoop(); });
  return std::unique_ptr<Manager>(new Manager(std::move(impl)));
}

const ManagerOptions& Manager::options() const { return impl_->options; }

const std::string& Manager::firecracker_version() const {
  static const std::string kNone;
  return impl_->binary.has_value() ? impl_->fc_version : kNone;
}

uint64_t Manager::Subscribe(std::function<void(const Event&)> callback) {
  absl::MutexLock lock(&impl_->mu);
  uint64_t token = impl_->next_token++;
  impl_->subscribers[token] = std::move(callback);
  return token;
}

void Manager::Unsubscribe(uint64_t token) {
  absl::MutexLock lock(&impl_->mu);
  impl_->subscribers.erase(token);
}

absl::StatusOr<VmInfo> Manager::Run(const RunRequest& request) {
  Impl& m = *impl_;
  RETURN_IF_ERROR(m.RequireBinary());
  RETURN_IF_ERROR(ValidateConfig(request.config));
  RETURN_IF_ERROR(m.CheckMemory(request.config.memory_mib, 1));
  RETURN_IF_ERROR(m.CheckDiskForCopies(
      request.config, [](const DriveConfig& d) { return d.path; }, 1, "the VM's private disk copies"));
  absl::Time start = absl::Now();
  std::string id = NewId("vm");
  std::string name = request.name.empty() ? id : request.name;
  RETURN_IF_ERROR(m.ReserveName(name));
  absl::Cleanup release_name = [&m, &name] { m.ReleaseName(name); };

  auto e = std::make_shared<VmEntry>();
  e->dir = m.vms_dir + "/" + id;
  e->info.id = id;
  e->info.name = name;
  e->info.labels = request.labels;
  e->info.config = request.config;
  e->info.created_at = start;
  absl::Cleanup undo = [&m, &e] {
    m.ReleaseResources(*e);
    (void)RemoveTree(e->dir);
  };
  std::optional<net::VmNetwork> net;
  if (request.config.network.enabled) {
    absl::Time nt = absl::Now();
    ASSIGN_OR_RETURN(net, m.SetupNetwork(id, request.config.network.publish));
    e->info.network = Impl::StatusOf(*net, request.config.network.guest_mac, request.config.network.publish);
    e->info.timings.network = absl::Now() - nt;
  }
  RETURN_IF_ERROR(m.AttachProcessAndDrives(
      *e, request.config, [](const DriveConfig& d) { return d.path; },
      net.has_value() ? net->netns.get() : -1));
  id = e->info.id;
  e->info.console_log_path = e->vmm->console_log_path();
  firecracker::BootSpec spec;
  spec.boot_source.kernel_image_path = request.config.kernel_path;
  spec.boot_source.boot_args = request.config.boot_args;
  if (!request.config.initrd_path.empty()) spec.boot_source.initrd_path = request.config.initrd_path;
  spec.machine.vcpu_count = static_cast<int>(request.config.vcpu_count);
  spec.machine.mem_size_mib = request.config.memory_mib;
  spec.drives = m.FirecrackerDrives(request.config);
  if (net.has_value()) {
    firecracker::NetworkInterface nic;
    nic.iface_id = "eth0";
    nic.host_dev_name = net->tap_name;
    if (!request.config.network.guest_mac.empty()) nic.guest_mac = request.config.network.guest_mac;
    spec.network_interfaces.push_back(nic);
  }
  absl::Time t = absl::Now();
  RETURN_IF_ERROR(e->vmm->Boot(spec));
  e->info.timings.load = absl::Now() - t;
  e->info.pid = e->vmm->pid();
  e->info.state = VmState::kRunning;
  e->info.timings.total = absl::Now() - start;
  std::move(undo).Cancel();
  {
    absl::MutexLock lock(&m.mu);
    m.vms[id] = e;
  }
  m.Watch(e, e->vmm->pidfd());
  m.Persist(e->info, e->dir);
  Event ev;
  ev.kind = EventKind::kVmState;
  ev.vm_id = id;
  ev.state = VmState::kRunning;
  ev.previous_state = VmState::kCreating;
  ev.message = "booted";
  m.Emit(ev);
  spdlog::info("vm {} ({}) booted in {}", id, name, absl::FormatDuration(e->info.timings.total));
  return m.Snapshot(*e);
}

absl::StatusOr<VmInfo> Manager::Get(const std::string& ref) const {
  ASSIGN_OR_RETURN(std::shared_ptr<VmEntry> e, impl_->Find(ref));
  return impl_->Snapshot(*e);
}

std::vector<VmInfo> Manager::List(const ListFilter& filter) const {
  std::string snapshot_id;
  if (!filter.snapshot_ref.empty()) {
    absl::StatusOr<storage::SnapshotRecord> snap = impl_->store->Get(filter.snapshot_ref);
    snapshot_id = snap.ok() ? snap->id : filter.snapshot_ref;
  }
  std::vector<VmInfo> out;
  absl::MutexLock lock(&impl_->mu);
  for (const auto& [id, e] : impl_->vms) {
    const VmInfo& v = e->info;
    if (!MatchesLabels(v.labels, filter.label_selector)) continue;
    if (!filter.states.empty() &&
        std::find(filter.states.begin(), filter.states.end(), v.state) == filter.states.end()) {
      continue;
    }
    if (!snapshot_id.empty() && v.snapshot_id != snapshot_id) continue;
    out.push_back(v);
  }
  std::sort(out.begin(), out.end(),
            [](const VmInfo& a, const VmInfo& b) { return a.created_at < b.created_at; });
  return out;
}

absl::StatusOr<VmInfo> Manager::Impl::SetPaused(const std::string& ref, bool paused) {
  ASSIGN_OR_RETURN(std::shared_ptr<VmEntry> e, Find(ref));
  absl::MutexLock op(&e->op_mu);
  VmInfo info = Snapshot(*e);
  const VmState to = paused ? VmState::kPaused : VmState::kRunning;
  const char* verb = paused ? "pause" : "resume";
  RETURN_IF_ERROR(CheckTransition(info.id, info.state, to, verb));
  firecracker::ApiClient* api = Api(*e);
  if (api == nullptr) return absl::FailedPreconditionError(absl::StrCat("vm ", info.id, " has no process"));
  RETURN_IF_ERROR(Annotate(paused ? api->Pause() : api->Resume(), absl::StrCat(verb, " vm ", info.id)));
  RETURN_IF_ERROR(SetState(*e, to, verb));
  return Snapshot(*e);
}

absl::StatusOr<VmInfo> Manager::Pause(const std::string& ref) { return impl_->SetPaused(ref, true); }

absl::StatusOr<VmInfo> Manager::Resume(const std::string& ref) { return impl_->SetPaused(ref, false); }

absl::StatusOr<DeleteResult> Manager::Impl::DeleteEntry(const std::shared_ptr<VmEntry>& e, bool force,
                                                        absl::Duration grace) {
  absl::MutexLock op(&e->op_mu);
  VmInfo info = Snapshot(*e);
  RETURN_IF_ERROR(SetState(*e, VmState::kStopping, "delete"));
  e->deleting = true;
  DeleteResult result;
  result.id = info.id;
  int pidfd = PidfdOf(*e);
  Unwatch(*e, pidfd);
  if (pidfd >= 0) {
    if (!force) {
      // Firecracker exits on SIGTERM; give it the grace period to do so.
      PidfdSendSignal(pidfd, SIGTERM);
      struct pollfd pfd = {pidfd, POLLIN, 0};
      int ms = static_cast<int>(absl::ToInt64Milliseconds(grace));
      result.forced = poll(&pfd, 1, ms) <= 0;
    } else {
      result.forced = true;
    }
  }
  ReleaseResources(*e);
  (void)RemoveTree(e->dir);
  {
    absl::MutexLock lock(&mu);
    vms.erase(info.id);
    pager_errors.erase(info.id);
  }
  Event ev;
  ev.kind = EventKind::kVmState;
  ev.vm_id = info.id;
  ev.snapshot_id = info.snapshot_id;
  ev.state = VmState::kStopped;
  ev.previous_state = VmState::kStopping;
  ev.message = result.forced ? "deleted (killed)" : "deleted";
  Emit(ev);
  return result;
}

absl::StatusOr<DeleteResult> Manager::Delete(const std::string& ref, bool force, absl::Duration grace) {
  ASSIGN_OR_RETURN(std::shared_ptr<VmEntry> e, impl_->Find(ref));
  return impl_->DeleteEntry(e, force, grace);
}

absl::StatusOr<SnapshotInfo> Manager::CreateSnapshot(const SnapshotRequest& request) {
  Impl& m = *impl_;
  ASSIGN_OR_RETURN(std::shared_ptr<VmEntry> e, m.Find(request.vm_ref));
  std::string id = NewId("snap");
  std::string name = request.name.empty() ? id : request.name;
  RETURN_IF_ERROR(ValidateName("snapshot name", name));
  std::optional<DeleteResult> stop_after;
  SnapshotInfo out;
  {
    absl::MutexLock op(&e->op_mu);
    VmInfo info = m.Snapshot(*e);
    if (info.state != VmState::kRunning && info.state != VmState::kPaused) {
      return absl::FailedPreconditionError(
          absl::StrCat("vm ", info.id, " is ", StateName(info.state), "; cannot snapshot"));
    }
    firecracker::ApiClient* api = m.Api(*e);
    if (api == nullptr || !e->vmm) {
      return absl::FailedPreconditionError(absl::StrCat(
          "vm ", info.id, " was re-adopted after a restart; snapshots need a VM this fcvmd started"));
    }
    // The memory file is written in full; the drives are copied (reflinked
    // where possible, but a snapshot must not count on it).
    uint64_t need = (info.config.memory_mib << 20) + (1 << 20);
    for (const DriveConfig& d : info.config.drives) {
      if (!d.read_only) need += storage::AllocatedBytes(e->dir + "/drives/" + d.drive_id).value_or(0);
    }
    RETURN_IF_ERROR(
        storage::CheckFreeSpace(m.store->root(), need, absl::StrCat("a snapshot of vm ", info.id)));
    ASSIGN_OR_RETURN(storage::PendingSnapshot pending, m.store->Begin(id, name));
    absl::Cleanup abort = [&m, &pending] { m.store->Abort(pending); };
    bool was_running = info.state == VmState::kRunning;
    absl::Time start = absl::Now();
    if (was_running) {
      RETURN_IF_ERROR(Annotate(api->Pause(), absl::StrCat("pause vm ", info.id, " for snapshot")));
      (void)m.SetState(*e, VmState::kPaused, "pause", "paused for snapshot");
    }
    absl::Cleanup resume = [&] {
      if (was_running && api->Resume().ok()) (void)m.SetState(*e, VmState::kRunning, "resume");
    };
    firecracker::SnapshotCreate create;
    create.type = firecracker::SnapshotType::kFull;
    create.snapshot_path = storage::SnapshotStore::VmstatePath(pending.dir);
    create.mem_file_path = storage::SnapshotStore::MemoryPath(pending.dir);
    // Snapshots of large VMs take a while: give it a minute per GiB, at least 60 s.
    absl::Duration timeout = std::max(absl::Seconds(60), absl::Seconds(60) * (info.config.memory_mib / 1024));
    RETURN_IF_ERROR(Annotate(e->vmm->CreateSnapshot(create, timeout), absl::StrCat("snapshot vm ", info.id)));
    storage::SnapshotRecord record;
    for (const DriveConfig& d : info.config.drives) {
      if (d.read_only) continue;
      RETURN_IF_ERROR(Annotate(storage::CopyDisk(e->dir + "/drives/" + d.drive_id,
                                                 storage::SnapshotStore::DiskPath(pending.dir, d.drive_id))
                                   .status(),
                               absl::StrCat("snapshot drive ", d.drive_id)));
      record.disk_ids.push_back(d.drive_id);
    }
    absl::Duration took = absl::Now() - start;
    record.labels = request.labels;
    record.source_vm_id = info.id;
    record.config_json = ConfigToJson(info.config);
    record.firecracker_version = m.fc_version;
    record.create_duration = took;
    ASSIGN_OR_RETURN(storage::SnapshotRecord done, m.store->Commit(pending, record));
    std::move(abort).Cancel();
    if (request.after == AfterSnapshot::kStayPaused) {
      std::move(resume).Cancel();
    } else if (request.after == AfterSnapshot::kStop) {
      std::move(resume).Cancel();
    }
    out = m.ToSnapshotInfo(done);
    spdlog::info("snapshot {} ({}) of vm {}: {} MiB in {}", done.id, done.name, info.id,
                 done.memory_bytes >> 20, absl::FormatDuration(took));
  }
  Event ev;
  ev.kind = EventKind::kSnapshotCreated;
  ev.snapshot_id = out.id;
  ev.vm_id = out.source_vm_id;
  ev.message = absl::StrCat("snapshot ", out.name, " created");
  m.Emit(ev);
  if (request.after == AfterSnapshot::kStop) {
    RETURN_IF_ERROR(Annotate(m.DeleteEntry(e, false, absl::Seconds(5)).status(), "stop after snapshot"));
  }
  return out;
}

absl::StatusOr<SnapshotInfo> Manager::GetSnapshot(const std::string& ref) const {
  ASSIGN_OR_RETURN(storage::SnapshotRecord r, impl_->store->Get(ref));
  return impl_->ToSnapshotInfo(r);
}

std::vector<SnapshotInfo> Manager::ListSnapshots(const std::map<std::string, std::string>& selector) const {
  std::vector<SnapshotInfo> out;
  for (const storage::SnapshotRecord& r : impl_->store->List()) {
    if (MatchesLabels(r.labels, selector)) out.push_back(impl_->ToSnapshotInfo(r));
  }
  std::sort(out.begin(), out.end(),
            [](const SnapshotInfo& a, const SnapshotInfo& b) { return a.created_at < b.created_at; });
  return out;
}

absl::StatusOr<DeleteSnapshotResult> Manager::DeleteSnapshot(const std::string& ref, bool force) {
  Impl& m = *impl_;
  ASSIGN_OR_RETURN(storage::SnapshotRecord r, m.store->Get(ref));
  std::vector<std::shared_ptr<VmEntry>> clones;
  {
    absl::MutexLock lock(&m.mu);
    for (const auto& [id, e] : m.vms) {
      if (e->info.snapshot_id == r.id) clones.push_back(e);
    }
  }
  if (!clones.empty() && !force) {
    return absl::FailedPreconditionError(absl::StrCat("snapshot ", r.name, " has ", clones.size(),
                                                      " clone(s); delete them first or use force"));
  }
  DeleteSnapshotResult result;
  result.id = r.id;
  for (auto& e : clones) {
    absl::StatusOr<DeleteResult> d = m.DeleteEntry(e, true, absl::ZeroDuration());
    if (d.ok()) result.stopped_vm_ids.push_back(d->id);
  }
  {
    absl::MutexLock lock(&m.mu);
    m.pinned.erase(r.id);
  }
  RETURN_IF_ERROR(m.store->Delete(r.id));
  Event ev;
  ev.kind = EventKind::kSnapshotDeleted;
  ev.snapshot_id = r.id;
  ev.message = absl::StrCat("snapshot ", r.name, " deleted");
  m.Emit(ev);
  return result;
}

absl::StatusOr<VmInfo> Manager::Impl::CloneOne(const storage::SnapshotRecord& snap, const VmConfig& config,
                                               const CloneRequest& req, const std::string& name) {
  absl::Time start = absl::Now();
  restoring.fetch_add(1);
  absl::Cleanup restored = [this] { restoring.fetch_sub(1); };
  std::string id = NewId("vm");
  auto e = std::make_shared<VmEntry>();
  e->dir = vms_dir + "/" + id;
  e->info.id = id;
  e->info.name = name;
  e->info.labels = req.labels;
  e->info.config = config;
  e->info.snapshot_id = snap.id;
  e->info.memory_backend = req.backend;
  e->info.prefetch_policy = req.policy;
  e->info.created_at = start;
  absl::Cleanup undo = [this, &e] {
    ReleaseResources(*e);
    (void)RemoveTree(e->dir);
  };
  std::string snap_dir = store->Dir(snap.id);
  std::optional<net::VmNetwork> net;
  if (config.network.enabled) {
    // The snapshot opens a tap with the source VM's name: every clone gets
    // its own namespace holding a tap of that name.
    absl::Time nt = absl::Now();
    ASSIGN_OR_RETURN(net, SetupNetwork(id, req.publish));
    e->info.network = StatusOf(*net, config.network.guest_mac, req.publish);
    e->info.timings.network = absl::Now() - nt;
  } else if (!req.publish.empty()) {
    return absl::InvalidArgumentError("the snapshot's VM has no network, so its clones cannot publish ports");
  }
  RETURN_IF_ERROR(AttachProcessAndDrives(
      *e, config,
      [&snap_dir](const DriveConfig& d) { return storage::SnapshotStore::DiskPath(snap_dir, d.drive_id); },
      net.has_value() ? net->netns.get() : -1));
  id = e->info.id;
  e->info.console_log_path = e->vmm->console_log_path();
  std::string mem = storage::SnapshotStore::MemoryPath(snap_dir);
  std::string pager_dir = storage::SnapshotStore::PagerDir(snap_dir);
  std::string wset = pager_dir + "/wset";
  bool prefetch_then_resume = false;
  firecracker::SnapshotLoad load;
  load.snapshot_path = storage::SnapshotStore::VmstatePath(snap_dir);
  if (req.backend == MemoryBackend::kUffd) {
    uffd::ListenerSpec spec;
    spec.socket_path = e->dir + "/uffd.sock";
    spec.files.mem_file_path = mem;
    spec.files.zero_map_path = pager_dir + "/zeromap";
    spec.files.working_set_path = wset;
    spec.policy = ToUffdPolicy(req.policy);
    spec.max_connections = 1;
    spec.on_failure = uffd::FailurePolicy::kKill;
    spec.tag = id;
    std::shared_ptr<uffd::SnapshotMemory> view;
    {
      absl::MutexLock lock(&mu);
      auto it = pinned.find(snap.id);
      if (it != pinned.end()) view = it->second;
    }
    if (view == nullptr) {
      absl::StatusOr<std::shared_ptr<uffd::SnapshotMemory>> opened = pager->OpenSnapshot(spec.files);
      if (opened.ok()) {
        view = *std::move(opened);
        absl::MutexLock lock(&mu);
        pinned.emplace(snap.id, view);
      }  // else AddListener reports the same error
    }
    // The page server's own view decides whether its session prefetches.
    auto ws = view != nullptr ? view->working_set() : nullptr;
    bool have_wset = ws != nullptr && !ws->empty();
    prefetch_then_resume =
        req.policy == PrefetchPolicy::kPrefetch || (req.policy == PrefetchPolicy::kAuto && have_wset);
    // Loaded paused and resumed after WaitPrefetchDone: every loop thread may help.
    spec.paused_during_prefetch = prefetch_then_resume;
    ASSIGN_OR_RETURN(uffd::ListenerId lid, pager->AddListener(spec));
    e->listener = lid;
    load.backend = firecracker::MemBackend::kUffd;
    load.backend_path = spec.socket_path;
  } else {
    load.backend = firecracker::MemBackend::kFile;
    load.backend_path = mem;
  }
  load.resume_vm = !prefetch_then_resume && !req.stay_paused;

  absl::Time t = absl::Now();
  RETURN_IF_ERROR(e->vmm->LoadSnapshot(load, options.clone_timeout));
  e->info.timings.load = absl::Now() - t;
  if (prefetch_then_resume) {
    t = absl::Now();
    RETURN_IF_ERROR(Annotate(pager->WaitPrefetchDone(*e->listener, absl::Now() + options.clone_timeout),
                             "prefetch working set"));
    e->info.timings.prefetch = absl::Now() - t;
    if (!req.stay_paused) RETURN_IF_ERROR(Annotate(e->vmm->api().Resume(), "resume after prefetch"));
  }
  e->info.pid = e->vmm->pid();
  e->info.state = req.stay_paused ? VmState::kPaused : VmState::kRunning;
  e->info.timings.total = absl::Now() - start;
  std::move(undo).Cancel();
  {
    absl::MutexLock lock(&mu);
    vms[id] = e;
  }
  Watch(e, e->vmm->pidfd());
  Persist(e->info, e->dir);
  Event ev;
  ev.kind = EventKind::kVmState;
  ev.vm_id = id;
  ev.snapshot_id = snap.id;
  ev.state = e->info.state;
  ev.previous_state = VmState::kCreating;
  ev.message = absl::StrCat("cloned from ", snap.name, " (", MemoryBackendName(req.backend), ")");
  Emit(ev);
  return Snapshot(*e);
}

absl::StatusOr<CloneResult> Manager::Clone(const CloneRequest& req) {
  Impl& m = *impl_;
  RETURN_IF_ERROR(m.RequireBinary());
  if (req.count < 1 || req.count > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("count must be 1-1024, got ", req.count));
  }
  ASSIGN_OR_RETURN(storage::SnapshotRecord snap, m.store->Get(req.snapshot_ref));
  ASSIGN_OR_RETURN(VmConfig config, ConfigFromJson(snap.config_json));
  if (req.backend == MemoryBackend::kFile && req.policy != PrefetchPolicy::kAuto &&
      req.policy != PrefetchPolicy::kNone) {
    return absl::InvalidArgumentError("prefetch policies apply to the UFFD backend only");
  }
  RETURN_IF_ERROR(m.CheckMemory(config.memory_mib, req.count));
  std::string snap_dir = m.store->Dir(snap.id);
  RETURN_IF_ERROR(m.CheckDiskForCopies(
      config,
      [&snap_dir](const DriveConfig& d) { return storage::SnapshotStore::DiskPath(snap_dir, d.drive_id); },
      req.count, absl::StrCat(req.count, " clone(s)' private disk copies")));
  std::string prefix = req.name_prefix.empty() ? snap.name : req.name_prefix;
  RETURN_IF_ERROR(ValidateName("clone name prefix", prefix));
  if (prefix.size() > 58) return absl::InvalidArgumentError("clone name prefix longer than 58 bytes");

  // Names "<prefix>-<n>", n continuing after the highest one in use.
  std::vector<std::string> names;
  {
    absl::MutexLock lock(&m.mu);
    int64_t next = 0;
    for (const auto& [id, e] : m.vms) {
      const std::string& n = e->info.name;
      int64_t k;
      if (absl::StartsWith(n, prefix + "-") && absl::SimpleAtoi(n.substr(prefix.size() + 1), &k)) {
        next = std::max(next, k + 1);
      }
    }
    for (uint32_t i = 0; i < req.count; ++i) {
      std::string n = absl::StrCat(prefix, "-", next + i);
      names.push_back(n);
    }
  }
  for (const std::string& n : names) {
    absl::Status st = m.ReserveName(n);
    if (!st.ok()) {
      for (const std::string& r : names) m.ReleaseName(r);
      return st;
    }
  }
  absl::Cleanup release = [&m, &names] {
    for (const std::string& n : names) m.ReleaseName(n);
  };

  absl::Time start = absl::Now();
  CloneResult result;
  result.clones.resize(req.count);
  std::vector<absl::Status> errors(req.count);
  uint32_t parallelism = req.parallelism > 0 ? req.parallelism : m.options.default_clone_parallelism;
  parallelism = std::clamp<uint32_t>(parallelism, 1, req.count);
  std::atomic<uint32_t> next_index{0};
  auto work = [&] {
    while (true) {
      uint32_t i = next_index.fetch_add(1);
      if (i >= req.count) return;
      absl::StatusOr<VmInfo> clone = m.CloneOne(snap, config, req, names[i]);
      if (clone.ok()) {
        result.clones[i] = *clone;
      } else {
        errors[i] = clone.status();
        VmInfo& failed = result.clones[i];
        failed.name = names[i];
        failed.state = VmState::kFailed;
        failed.snapshot_id = snap.id;
        failed.memory_backend = req.backend;
        failed.prefetch_policy = req.policy;
        failed.config = config;
        failed.error = clone.status().ToString();
        spdlog::warn("clone {} of {} failed: {}", names[i], snap.name, clone.status());
      }
      if (req.on_clone_done) req.on_clone_done(result.clones[i]);
    }
  };
  std::vector<std::thread> workers;
  for (uint32_t w = 1; w < parallelism; ++w) workers.emplace_back(work);
  work();
  for (std::thread& th : workers) th.join();
  result.total = absl::Now() - start;
  absl::Status first_error;
  for (uint32_t i = 0; i < req.count; ++i) {
    if (errors[i].ok()) {
      ++result.succeeded;
    } else {
      ++result.failed;
      if (first_error.ok()) first_error = errors[i];
    }
  }
  if (req.all_or_nothing && result.failed > 0) {
    for (const VmInfo& v : result.clones) {
      if (v.state == VmState::kFailed || v.id.empty()) continue;
      (void)Delete(v.id, true, absl::ZeroDuration());
    }
    return Annotate(first_error,
                    absl::StrCat(result.failed, " of ", req.count, " clones failed (all_or_nothing)"));
  }
  spdlog::info("cloned {} x{}: {} ok, {} failed in {}", snap.name, req.count, result.succeeded, result.failed,
               absl::FormatDuration(result.total));
  return result;
}

absl::StatusOr<uffd::ServerStats> Manager::PageServerStats() const { return impl_->pager->GetStats(); }

// What a previous fcvmd left: VMs whose Firecracker still runs and does not
// need our page server are re-adopted; those that need it are killed (nobody
// can serve their faults any more); dead ones are marked stopped; directories
// without a record are removed.
void Manager::Impl::Reconcile() {
  DIR* dir = opendir(vms_dir.c_str());
  if (dir == nullptr) return;
  std::vector<std::string> names;
  while (dirent* d = readdir(dir)) {
    std::string n = d->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  closedir(dir);
  for (const std::string& n : names) {
    std::string vm_dir = vms_dir + "/" + n;
    Event ev;
    ev.kind = EventKind::kReconcile;
    ev.vm_id = n;
    absl::StatusOr<std::string> text = ReadFile(vm_dir + "/vm.json");
    absl::StatusOr<VmInfo> info = text.ok() ? InfoFromJson(*text) : absl::StatusOr<VmInfo>(text.status());
    if (!info.ok() || info->id != n) {
      ev.message = absl::StrCat("removed orphaned directory ", vm_dir);
      (void)RemoveTree(vm_dir);
      spdlog::info("reconcile: {}", ev.message);
      Emit(ev);
      continue;
    }
    auto e = std::make_shared<VmEntry>();
    e->dir = vm_dir;
    e->info = *info;
    bool alive = false;
    std::optional<Process> proc;
    if (info->pid > 0 && (info->state == VmState::kRunning || info->state == VmState::kPaused ||
                          info->state == VmState::kCreating || info->state == VmState::kStopping)) {
      absl::StatusOr<Process> p = Process::Adopt(info->pid);
      // The pid must still be this VM's Firecracker: its command line names
      // the VM's API socket.
      absl::StatusOr<std::string> cmdline = ReadFile(absl::StrCat("/proc/", info->pid, "/cmdline"));
      if (p.ok() && cmdline.ok() && absl::StrContains(*cmdline, vm_dir + "/api.sock")) {
        alive = true;
        proc = std::move(*p);
      }
    }
    bool needs_pager = !info->snapshot_id.empty() && info->memory_backend == MemoryBackend::kUffd;
    if (alive && needs_pager) {
      (void)proc->Kill();
      e->info.state = VmState::kStopped;
      e->info.pid = 0;
      e->info.error = "killed at fcvmd start: its memory was served by the previous fcvmd's page server";
      ev.message =
          absl::StrCat("killed UFFD clone ", n, " (pid ", info->pid, "): nobody can serve its faults");
    } else if (alive) {
      e->adopted = std::move(proc);
      e->adopted_api = std::make_unique<firecracker::ApiClient>(vm_dir + "/api.sock");
      ev.message = absl::StrCat("re-adopted ", n, " (pid ", info->pid, ")");
    } else if (e->info.state == VmState::kRunning || e->info.state == VmState::kPaused ||
               e->info.state == VmState::kCreating || e->info.state == VmState::kStopping) {
      e->info.state = VmState::kStopped;
      e->info.pid = 0;
      e->info.error = "firecracker exited while fcvmd was not running";
      ev.message = absl::StrCat("marked ", n, " stopped: its firecracker is gone");
    } else {
      ev.message = absl::StrCat("kept record of ", StateName(e->info.state), " vm ", n);
    }
    if (!e->adopted.has_value()) {
      unlink((vm_dir + "/uffd.sock").c_str());
      unlink((vm_dir + "/api.sock").c_str());
    }
    Persist(e->info, vm_dir);
    {
      absl::MutexLock lock(&mu);
      vms[n] = e;
    }
    if (e->adopted.has_value()) Watch(e, e->adopted->pidfd());
    spdlog::info("reconcile: {}", ev.message);
    Emit(ev);
  }
  if (network == nullptr) return;
  // Networks survive only with their re-adopted VM.
  absl::flat_hash_set<std::string> live;
  {
    absl::MutexLock lock(&mu);
    for (auto& [id, e] : vms) {
      if (e->adopted.has_value() && !e->info.network.netns.empty()) {
        live.insert(id);
      } else if (!e->info.network.netns.empty()) {
        e->info.network = NetworkStatus{};
      }
    }
  }
  absl::StatusOr<std::vector<std::string>> removed = network->ReconcileOrphans(live);
  if (!removed.ok()) {
    spdlog::warn("reconcile: networks: {}", removed.status());
    return;
  }
  for (const std::string& id : *removed) {
    Event ev;
    ev.kind = EventKind::kReconcile;
    ev.vm_id = id;
    ev.message = absl::StrCat("removed the network of ", id);
    spdlog::info("reconcile: {}", ev.message);
    Emit(ev);
  }
}

}  // namespace fcvm::vm
