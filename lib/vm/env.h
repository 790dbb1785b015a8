#pragma once

// The manager's view of the outside world, one narrow interface per thing it
// reaches (leveldb's Env is the model): Firecracker processes, the page
// server, VM networks, and the host's disks and memory. The real
// implementations (real_env.h) wrap lib/firecracker, lib/uffd, lib/net and
// lib/storage; tests/unit/vm has fakes, so that clone, rollback,
// cancellation, names, reconcile and the warm pool run in unit tests on any
// machine.
//
// Every interface is thread-safe unless it says otherwise: the manager calls
// them from many workers at once.

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "lib/base/cancel.h"
#include "lib/base/hugetlb.h"
#include "lib/base/process.h"
#include "lib/base/unique_fd.h"
#include "lib/firecracker/api_types.h"
#include "lib/firecracker/cgroup.h"
#include "lib/firecracker/jail.h"
#include "lib/firecracker/snapshot_compat.h"
#include "lib/firecracker/vmm.h"
#include "lib/uffd/page_server.h"
#include "lib/vm/types.h"

namespace fcvm::vm {

// One Firecracker process. Driven by one thread at a time (the VM's operation
// lock); pidfd() may be watched from another.
class Vmm {
 public:
  virtual ~Vmm() = default;
  virtual pid_t pid() const = 0;
  // Readable (POLLIN) once the process has exited.
  virtual int pidfd() const = 0;
  virtual std::string console_log_path() const = 0;
  // Process start until its API answered (zero for an adopted process).
  virtual absl::Duration startup_time() const = 0;

  virtual absl::Status Boot(const firecracker::BootSpec& spec) = 0;
  virtual absl::Status LoadSnapshot(const firecracker::SnapshotLoad& load, absl::Duration timeout) = 0;
  virtual absl::Status CreateSnapshot(const firecracker::SnapshotCreate& create, absl::Duration timeout) = 0;
  virtual absl::Status Pause() = 0;
  virtual absl::Status Resume() = 0;
  // Its metadata store (MMDS): PUT /mmds replaces it, GET /mmds reads it.
  virtual absl::Status PutMmds(absl::string_view json) = 0;
  virtual absl::StatusOr<std::string> GetMmds() = 0;
  // OK while it runs; Unavailable naming how it ended once it has exited.
  virtual absl::Status CheckRunning() = 0;
  // Asks it to stop (SIGTERM) and waits up to `grace`; true when it exited.
  virtual bool Terminate(absl::Duration grace) = 0;
  // SIGKILL and reap; idempotent. How it ended (ExitStatus::known is false
  // for a process this fcvmd did not start).
  virtual absl::StatusOr<ExitStatus> Kill() = 0;
  // Lets it outlive this fcvmd (the next one re-adopts it by pid).
  virtual void Release() = 0;
  // The last lines of its log and console, for error messages.
  virtual std::string RecentOutput() = 0;

  // ---- jailed processes (FailedPrecondition otherwise) ----
  // Hard-links one more file into the running jail.
  virtual absl::Status PlaceFile(const firecracker::JailFile& file) = 0;
  // Changes / reads the limits of the VM's cgroup.
  virtual absl::Status UpdateLimits(const firecracker::CgroupLimits& limits) = 0;
  virtual absl::StatusOr<firecracker::CgroupLimits> ReadLimits() = 0;
  // "v1" or "v2"; empty when not jailed.
  virtual std::string cgroup_version() const = 0;
};

// How a VM's Firecracker is jailed (see lib/firecracker/jail.h).
struct JailSpec {
  uint32_t uid = 0;
  uint32_t gid = 0;
  // Put into the chroot before the launch (a hard link, else a bind mount).
  std::vector<firecracker::JailFile> files;
  firecracker::CgroupLimits limits;
  // A network namespace file to join (/run/netns/NAME); empty: the host's.
  std::string netns_path;
};

struct LaunchSpec {
  std::string id;      // Firecracker's --id (the VM id)
  std::string vm_dir;  // api.sock, console.log, logs; created if missing
  // Run inside this network namespace (-1: the host's).
  int netns_fd = -1;
  // Bind mounts of a private mount namespace (the VM's drive directory over
  // the fixed path its snapshot baked in).
  std::vector<BindMount> bind_mounts;
  // A warm-pool process: it dies with the launching thread.
  bool pooled = false;
  // Its anonymous memory mergeable by KSM (ManagerOptions::memory_merge).
  bool memory_merge = false;
  CancelToken cancel;
  // Set exactly when the factory jails (VmmFactory::jailed); then
  // bind_mounts and netns_fd are not used.
  std::optional<JailSpec> jail;
};

class VmmFactory {
 public:
  virtual ~VmmFactory() = default;
  // Starts Firecracker and waits for its API. Nothing is left running on error.
  virtual absl::StatusOr<std::unique_ptr<Vmm>> Launch(const LaunchSpec& spec) = 0;
  // Takes hold of the Firecracker a previous fcvmd started for the VM whose
  // directory is `vm_dir`, after checking that `pid` is still that process.
  // NotFound when it is gone or is something else now.
  virtual absl::StatusOr<std::unique_ptr<Vmm>> Adopt(pid_t pid, const std::string& vm_dir) = 0;
  // Firecracker processes running for VM directories under `vms_dir` (found
  // by their API socket), as pid -> VM directory: what a crashed fcvmd may
  // have left without a record.
  virtual std::map<pid_t, std::string> FindRunning(const std::string& vms_dir) = 0;
  virtual std::string version() const = 0;
  // The snapshot data format this Firecracker writes ("8.0.0"); empty when
  // unknown.
  virtual std::string snapshot_format() const { return ""; }

  // ---- jailing ----
  // True when every Firecracker runs under the jailer.
  virtual bool jailed() const = 0;
  // "jailer 1.7.0" or "none".
  virtual std::string isolation() const = 0;
  // The jail of VM `id` (paths only; nothing is created). FailedPrecondition
  // when not jailed.
  virtual absl::StatusOr<firecracker::JailPaths> JailFor(const std::string& id) const = 0;
  // Removes the jail (chroot and cgroups) of VM `id`, whose process is gone.
  virtual absl::Status RemoveJail(const std::string& id) = 0;
  // The VM ids that have a jail.
  virtual std::vector<std::string> ListJails() = 0;
};

// The page server, as the manager uses it.
class PageService {
 public:
  virtual ~PageService() = default;
  // See uffd::PageServer::AddListener: `resolved` gets the policy kAuto
  // became.
  virtual absl::StatusOr<uffd::ListenerId> AddListener(const uffd::ListenerSpec& spec,
                                                       uffd::ClonePolicy* resolved) = 0;
  virtual absl::Status WaitPrefetchDone(uffd::ListenerId id, absl::Time deadline) = 0;
  virtual absl::Status RemoveListener(uffd::ListenerId id) = 0;
  // RemoveListener, but the clone is left running (its faults wait for the
  // next fcvmd, which adopts it).
  virtual absl::Status DetachListener(uffd::ListenerId id) = 0;
  // Takes over clone `pid`, which a previous fcvmd's page server served
  // (uffd::AdoptSpec): `spec` is what its listener was given, `handshake` the
  // copy its session kept (ListenerSpec::handshake_copy_path).
  virtual absl::StatusOr<uffd::ListenerId> AdoptClone(const uffd::ListenerSpec& spec,
                                                      const std::string& handshake, pid_t pid) = 0;
  // Keeps the server's view of a snapshot's memory loaded while no clone
  // uses it (until Unpin), so that the next clone finds it ready.
  virtual absl::Status Pin(const std::string& snapshot_id, const uffd::SnapshotFiles& files) = 0;
  virtual void Unpin(const std::string& snapshot_id) = 0;
  // Pages of the snapshot's recorded working set (0 when none), from the
  // pinned view or the file.
  virtual uint64_t WorkingSetPages(const std::string& snapshot_id, const uffd::SnapshotFiles& files) = 0;
  virtual uffd::ServerStats GetStats() = 0;
  virtual void SetEventCallback(std::function<void(const uffd::SessionEvent&)> callback) = 0;
  virtual void Stop() = 0;
};

// What a VM's network setup produced.
struct VmNetworkInfo {
  UniqueFd netns;  // an fd of its namespace (for LaunchSpec::netns_fd)
  std::string netns_name;
  std::string tap;
  std::string guest_ip;
  std::string host_ip;
};

class NetworkService {
 public:
  virtual ~NetworkService() = default;
  // OK when VMs can have networks here; otherwise Unavailable with why.
  virtual absl::Status Available() const = 0;
  // The tap is owned by `tap_owner` (a jailed VM's uid; 0: root).
  virtual absl::StatusOr<VmNetworkInfo> Setup(const std::string& vm_id,
                                              const std::vector<PortMapping>& publish,
                                              uint32_t tap_owner = 0) = 0;
  // Idempotent.
  virtual absl::Status Teardown(const std::string& vm_id) = 0;
  // Removes the networks of VMs not in `live`; returns their ids.
  virtual absl::StatusOr<std::vector<std::string>> ReconcileOrphans(
      const absl::flat_hash_set<std::string>& live) = 0;
  // The shared host rules, once no VM network is left.
  virtual absl::Status RemoveHostRules() = 0;
};

// What a process uses (Host::ReadProcessUsage).
struct ProcessUsage {
  absl::Duration cpu_time;  // user + system, all threads
  uint64_t rss_bytes = 0;
  std::optional<uint64_t> pss_bytes;  // when asked for
};

// The host's disks, memory and processes.
class Host {
 public:
  virtual ~Host() = default;
  virtual absl::StatusOr<uint64_t> MemAvailableMib() = 0;
  // The host's pool of `page_size`-byte huge pages (lib/base/hugetlb.h
  // ReadHugePagePoolOf): NotFound when the host has none of that size.
  virtual absl::StatusOr<HugePagePool> HugePagePoolOf(uint64_t page_size) = 0;
  // What a sparse copy of `path` needs.
  virtual absl::StatusOr<uint64_t> AllocatedBytes(const std::string& path) = 0;
  // ResourceExhausted naming `what` when `dir`'s file system lacks `need`.
  virtual absl::Status CheckFreeSpace(const std::string& dir, uint64_t need, absl::string_view what) = 0;
  // True when private copies are reflinks (take no space up front).
  virtual bool reflinks() const = 0;
  // A private copy of a disk image, mode 0600; cancellable between chunks.
  virtual absl::Status CopyDisk(const std::string& src, const std::string& dst,
                                const CancelToken& cancel) = 0;
  // Atomic replace of a small record file (mode 0600). Errors (a full disk)
  // are returned: a record that is not written must fail the request.
  virtual absl::Status WriteRecord(const std::string& path, absl::string_view contents) = 0;
  // This host as a snapshot records it (CPU, kernel release, page size; the
  // Firecracker fields empty): see lib/firecracker/snapshot_compat.h.
  virtual absl::StatusOr<firecracker::SnapshotHost> Describe() { return firecracker::ProbeHost(); }
  // CPU time and memory of process `pid` (/proc/<pid>/stat; with `pss`, also
  // smaps_rollup). NotFound when it is gone.
  virtual absl::StatusOr<ProcessUsage> ReadProcessUsage(pid_t pid, bool pss) = 0;
};

// Everything the manager reaches, owned by it.
struct Env {
  std::unique_ptr<VmmFactory> vmms;  // null: no Firecracker configured
  std::unique_ptr<PageService> pager;
  std::unique_ptr<NetworkService> network;
  std::unique_ptr<Host> host;
};

}  // namespace fcvm::vm
