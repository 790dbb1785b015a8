#pragma once

// Fakes of lib/vm's Env (lib/vm/env.h), so that the manager's logic (clone,
// rollback, cancellation, names, reconcile, the warm pool) runs in unit tests
// on any machine: no Firecracker, no KVM, no userfaultfd, no namespaces.
//
// Files are real (a temporary state directory): records, snapshot stores and
// drive copies are written as in production. What is faked is every process,
// the page server, networks and the host's resources. Each fake can be told
// to fail a step, or to block it until released (a Gate), so that tests can
// stop an operation in the middle and look, or cancel it, without sleeps.

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lib/base/process.h"
#include "lib/base/unique_fd.h"
#include "lib/vm/env.h"

namespace fcvm::vm::testing {

// Something a fake waits at: closed, every Wait blocks until Open (or the
// token given to Wait is cancelled). `arrived` counts waiters that got there.
class Gate {
 public:
  void Close();
  void Open();
  // Blocks while closed; returns the token's status if it is cancelled first.
  absl::Status Wait(const CancelToken& cancel = {});
  // Blocks until `n` waiters in all have arrived (true) or `timeout` passed.
  bool AwaitArrivals(int n, absl::Duration timeout = absl::Seconds(10));
  int arrived() const;

 private:
  mutable absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  int arrived_ ABSL_GUARDED_BY(mu_) = 0;
};

// What the fakes saw and are told to do. Shared by all fakes of one Env;
// every field is guarded by `mu`.
struct FakeWorld {
  absl::Mutex mu;
  // Firecracker processes.
  int launches ABSL_GUARDED_BY(mu) = 0;
  int pooled_launches ABSL_GUARDED_BY(mu) = 0;
  std::vector<pid_t> pids ABSL_GUARDED_BY(mu);  // of every launch, in order
  int kills ABSL_GUARDED_BY(mu) = 0;
  int released ABSL_GUARDED_BY(mu) = 0;
  int alive ABSL_GUARDED_BY(mu) = 0;  // launched or adopted, not yet killed/exited/released
  int loads ABSL_GUARDED_BY(mu) = 0;
  int boots ABSL_GUARDED_BY(mu) = 0;
  int resumes ABSL_GUARDED_BY(mu) = 0;
  std::vector<bool> loads_resumed ABSL_GUARDED_BY(mu);  // resume_vm of each load
  // machine.huge_pages of each boot ("" when unset), memory_merge of each
  // launch (pooled ones included), backend of each load.
  std::vector<std::string> boot_huge_pages ABSL_GUARDED_BY(mu);
  std::vector<bool> launches_merged ABSL_GUARDED_BY(mu);
  // Bind mounts of each launch (the unjailed drive directory, or none).
  std::vector<size_t> launches_bind_mounts ABSL_GUARDED_BY(mu);
  std::vector<firecracker::MemBackend> load_backends ABSL_GUARDED_BY(mu);
  // Fail the n-th (1-based) launch / load / boot; 0 = never.
  int fail_launch_at ABSL_GUARDED_BY(mu) = 0;
  int fail_load_at ABSL_GUARDED_BY(mu) = 0;
  // Fail the n-th (1-based) CreateSnapshot after its files are written (as
  // a Firecracker that reset its dirty log, then failed); 0 = never. The type
  // of each one, in order.
  int fail_snapshot_at ABSL_GUARDED_BY(mu) = 0;
  std::vector<firecracker::SnapshotType> snapshot_types ABSL_GUARDED_BY(mu);
  // track_dirty_pages of each load (unset: false).
  std::vector<bool> loads_tracked ABSL_GUARDED_BY(mu);
  absl::Status load_error ABSL_GUARDED_BY(mu) = absl::InvalidArgumentError("PUT /snapshot/load: bad");
  // Pids that Adopt finds alive, with their VM directory; FindRunning's answer.
  std::map<pid_t, std::string> running ABSL_GUARDED_BY(mu);
  // Jailing: when `jailed`, every launch must come with a jail spec; jails
  // live under `jail_base` (created by the fake "jailer", removed by Kill or
  // RemoveJail). uid of each launched VM id, and the limits it got.
  bool jailed ABSL_GUARDED_BY(mu) = false;
  std::string jail_base ABSL_GUARDED_BY(mu);
  std::set<std::string> jails ABSL_GUARDED_BY(mu);
  std::map<std::string, uint32_t> uids ABSL_GUARDED_BY(mu);
  std::map<std::string, uint32_t> tap_owners ABSL_GUARDED_BY(mu);
  // Page server.
  int listeners ABSL_GUARDED_BY(mu) = 0;  // live
  int detached ABSL_GUARDED_BY(mu) = 0;   // DetachListener calls
  // AdoptClone: the pids whose userfaultfd can be taken (others: NotFound),
  // and the handshake each adopted clone was given.
  std::set<pid_t> uffd_pids ABSL_GUARDED_BY(mu);
  std::map<pid_t, std::string> adopted_handshakes ABSL_GUARDED_BY(mu);
  std::set<std::string> pinned ABSL_GUARDED_BY(mu);
  std::set<std::string> recording ABSL_GUARDED_BY(mu);     // snapshot mem files with a recorder
  std::set<std::string> working_sets ABSL_GUARDED_BY(mu);  // mem files that have one
  uint64_t working_set_pages ABSL_GUARDED_BY(mu) = 0;
  // GetStats: each live listener (tagged with its VM id) reports the faults
  // given here for its tag; `pager_total` is the server's total.
  std::map<std::string, uint64_t> faults_by_tag ABSL_GUARDED_BY(mu);
  uffd::PageStats pager_total ABSL_GUARDED_BY(mu);
  // The manager's session-event callback (SetEventCallback), for tests to
  // fire page-server events.
  std::function<void(const uffd::SessionEvent&)> pager_events ABSL_GUARDED_BY(mu);
  // Network.
  bool network_available ABSL_GUARDED_BY(mu) = true;
  std::set<std::string> networks ABSL_GUARDED_BY(mu);  // vm ids with a network
  // Host.
  uint64_t mem_available_mib ABSL_GUARDED_BY(mu) = 1 << 20;
  // The host's 2 MiB huge page pool; nullopt: the host has none (NotFound).
  std::optional<HugePagePool> huge_pool ABSL_GUARDED_BY(mu);
  bool fail_records ABSL_GUARDED_BY(mu) = false;  // WriteRecord: ENOSPC
  int disk_copies ABSL_GUARDED_BY(mu) = 0;
  // What Host::Describe and the factory say about this host and its
  // Firecracker; the fake vmstate files carry `snapshot_format` in a real
  // Firecracker header.
  firecracker::SnapshotHost host ABSL_GUARDED_BY(mu) = DefaultFakeHost();
  std::string firecracker_version ABSL_GUARDED_BY(mu) = "1.14.2";
  std::string snapshot_format ABSL_GUARDED_BY(mu) = "8.0.0";
  // MMDS: each process's store (by pid), PUTs made while its vCPUs ran, and
  // every BootSpec booted.
  std::map<pid_t, std::string> mmds ABSL_GUARDED_BY(mu);
  int mmds_puts_while_running ABSL_GUARDED_BY(mu) = 0;
  std::vector<firecracker::BootSpec> boot_specs ABSL_GUARDED_BY(mu);

  static firecracker::SnapshotHost DefaultFakeHost() {
    firecracker::SnapshotHost h;
    h.cpu.vendor = "GenuineIntel";
    h.cpu.family = 6;
    h.cpu.model = 85;
    h.cpu.model_name = "Fake Xeon";
    h.cpu.flags = {"avx", "avx2", "pni"};
    h.kernel_release = "6.1.0-fake";
    h.page_size = 4096;
    return h;
  }
  // ReadProcessUsage: by pid, else `default_usage` (its pss_bytes only when
  // asked for); `usage_reads` counts calls, `pss_reads` those with pss.
  std::map<pid_t, ProcessUsage> process_usage ABSL_GUARDED_BY(mu);
  ProcessUsage default_usage ABSL_GUARDED_BY(mu) = {absl::Seconds(1), 16 << 20, 8 << 20};
  int usage_reads ABSL_GUARDED_BY(mu) = 0;
  int pss_reads ABSL_GUARDED_BY(mu) = 0;

  // Where the fakes block (open unless a test closes them).
  Gate launch_gate;
  Gate load_gate;
  Gate copy_gate;
  Gate boot_gate;
};

// An Env of fakes sharing `world`.
Env MakeFakeEnv(const std::shared_ptr<FakeWorld>& world);

// The fake process of VM `vm_dir` (by pid) exits with `code`: its pidfd
// becomes readable. Returns false for an unknown pid.
bool ExitFakeProcess(pid_t pid, int code);

}  // namespace fcvm::vm::testing
