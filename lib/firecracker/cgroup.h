#pragma once

// cgroups for jailed Firecracker processes: which cgroup versions and
// controllers this host has, the jailer's --cgroup arguments for a VM's
// limits, reading the limits back, and removing a VM's cgroup directories.
//
// The jailer (not fcvm) creates the cgroups: for each `--cgroup <file>=<value>`
// it creates <mount>/<parent>/<id> (v1: <mount> is the hierarchy that has the
// file's controller, the first one in /proc/mounts; v2: the first cgroup2
// mount, after enabling the controller in every ancestor's
// cgroup.subtree_control), writes the value and moves itself in before it
// execs Firecracker. fcvm removes those directories once Firecracker is gone
// (RemoveVmCgroups); it leaves <mount>/<parent> and the ancestors'
// subtree_control as they are, since other VMs use them.
//
// Hosts: pure cgroup v2 (one cgroup2 mount at /sys/fs/cgroup), or v1
// controllers under /sys/fs/cgroup/<controller> with or without a cgroup2
// mount beside them (a controller is in one hierarchy only: on such hybrid
// hosts the cgroup2 mount usually has none of memory/cpu/pids).
//
// Limits and what they mean in each version:
//
//   limit              v1 file(s)                          v2 file
//   memory_bytes       memory.limit_in_bytes               memory.max
//   cpu_quota/period   cpu.cfs_period_us, cpu.cfs_quota_us cpu.max ("quota period")
//   cpu_weight         cpu.shares (= weight * 1024 / 100)  cpu.weight
//   pids_max           pids.max                            pids.max
//
// memory_bytes covers guest memory AND Firecracker's own (see
// kVmmMemoryOverheadBytes); under v1 and v2 it also covers page cache the VM
// charges, e.g. a Full snapshot's memory file while it is written.
//
// Thread-safety: plain functions and values; CgroupHost is immutable.

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fcvm::firecracker {

enum class CgroupVersion {
  kAuto,  // v2 when the cgroup2 mount has every controller needed, else v1
  kV1,
  kV2,
};
const char* CgroupVersionName(CgroupVersion v);  // "auto", "1", "2"

// What the host's cgroup mounts offer, as the jailer sees them.
struct CgroupHost {
  // v1: controller -> mount point of the first hierarchy that has it.
  std::map<std::string, std::string> v1_mounts;
  // v2: the first cgroup2 mount ("" if none) and the controllers listed in
  // its cgroup.controllers.
  std::string v2_mount;
  std::set<std::string> v2_controllers;

  // Reads `mounts_path` (the jailer reads /proc/mounts; the same here) and
  // <v2 mount>/cgroup.controllers. Errors only when the mounts file cannot be
  // read; a host without cgroups gives an empty CgroupHost.
  static absl::StatusOr<CgroupHost> Detect(const std::string& mounts_path = "/proc/self/mounts");

  // The controllers available with `version` (kV1 or kV2).
  std::set<std::string> Controllers(CgroupVersion version) const;
};

// Firecracker's memory beyond guest memory, for memory limits. Measured with
// the test guest (fc_bench, docs/security.md "Memory limit"): about 2 MiB
// charged to the VM's cgroup and 3 MiB of RSS beyond the guest's resident
// memory; Firecracker's own specification promises under 5 MiB. The rest is
// margin for devices (virtio queues, net buffers), vCPUs, KVM's page tables
// and page cache the VM charges.
inline constexpr uint64_t kVmmMemoryOverheadBytes = uint64_t{32} << 20;

// Tasks (threads) Firecracker runs besides its vCPUs: the main (VMM) thread
// and the API thread; the margin covers the short-lived ones.
inline constexpr uint64_t kVmmBaseTasks = 2;
inline constexpr uint64_t kVmmTaskMargin = 2;

struct CgroupLimits {
  // Guest memory + Firecracker's own; 0 = no limit. Rounded up to 4 KiB.
  uint64_t memory_bytes = 0;
  // CFS bandwidth: at most cpu_quota_us of CPU time every cpu_period_us
  // (quota 0 = no limit). quota >= 1000, period 1000..1000000.
  uint64_t cpu_quota_us = 0;
  uint64_t cpu_period_us = 100000;
  // Relative weight 1..10000 (v2's scale, 100 = default); 0 = unset.
  uint32_t cpu_weight = 0;
  // Max tasks (threads) in the VM's cgroup; 0 = no limit.
  uint64_t pids_max = 0;
  // Further raw settings, "<controller>.<file>" -> value, passed to the
  // jailer unchanged after the ones above (e.g. "hugetlb.2MB.max").
  std::vector<std::pair<std::string, std::string>> extra;

  bool empty() const {
    return memory_bytes == 0 && cpu_quota_us == 0 && cpu_weight == 0 && pids_max == 0 && extra.empty();
  }
};

// The smallest limits a VM with this guest can run under: memory = guest +
// kVmmMemoryOverheadBytes, pids = vcpus + kVmmBaseTasks + kVmmTaskMargin.
uint64_t MinMemoryBytes(uint64_t guest_mem_mib);
uint64_t MinPids(int vcpus);

// InvalidArgument, naming the limit, its value and the minimum, when a set
// limit is below what a guest with `vcpus` and `guest_mem_mib` needs.
absl::Status CheckLimitsForGuest(const CgroupLimits& limits, int vcpus, uint64_t guest_mem_mib);

// The cgroup settings for one VM, resolved against a host.
struct CgroupPlan {
  CgroupVersion version = CgroupVersion::kV1;  // kV1 or kV2, never kAuto
  std::string parent;                          // --parent-cgroup
  // file -> value, in the order the jailer must write them.
  std::vector<std::pair<std::string, std::string>> settings;
  // The controllers `settings` use.
  std::set<std::string> controllers;

  // "--cgroup-version N --parent-cgroup P --cgroup f=v ..."; empty when there
  // is nothing to set (no cgroup is created then).
  std::vector<std::string> JailerArgs() const;
};

// Validates `limits` and turns them into settings for `version` (kAuto picks
// as described there). InvalidArgument for values out of range or a malformed
// extra setting or parent; FailedPrecondition naming the controller(s) the
// host lacks ("cgroup v2 controller memory is not available in
// /sys/fs/cgroup/unified (it has: hugetlb)").
absl::StatusOr<CgroupPlan> PlanCgroups(const CgroupHost& host, CgroupVersion version,
                                       const CgroupLimits& limits, const std::string& parent);

// The directories the jailer creates for VM `id` under `plan` (one per v1
// hierarchy used, or one under the v2 mount).
std::vector<std::string> VmCgroupDirs(const CgroupHost& host, const CgroupPlan& plan, const std::string& id);

// Reads the limits back from VM `id`'s cgroup files (for GetVm and tests).
// Limits the plan does not set are left 0; "max" / -1 read back as 0.
// NotFound when a directory is missing.
absl::StatusOr<CgroupLimits> ReadVmCgroupLimits(const CgroupHost& host, const CgroupPlan& plan,
                                                const std::string& id);

// Writes `plan`'s settings into VM `id`'s existing cgroup files, in order: to
// change the limits of a running VM (a warm-pool entry handed to a VM).
// NotFound when a directory is missing; the kernel's errors otherwise (a v1
// memory limit below current usage is refused with EBUSY).
absl::Status WriteVmCgroupSettings(const CgroupHost& host, const CgroupPlan& plan, const std::string& id);

// Removes VM `id`'s cgroup directories under `parent` in every hierarchy of
// `host` (v1 and v2), whatever plan made them: what reconciliation needs after
// a restart. OK when there are none. FailedPrecondition (EBUSY) when one still
// holds a process or a child cgroup.
absl::Status RemoveVmCgroups(const CgroupHost& host, const std::string& parent, const std::string& id);

}  // namespace fcvm::firecracker
