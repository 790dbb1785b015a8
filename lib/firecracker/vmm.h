#pragma once

// Launching and supervising one Firecracker process.
//
// A Vmm owns a Firecracker child held by a pidfd (fcvm::Process) that got
// exactly three fds: /dev/null as stdin, the FIFO <vm_dir>/console.fifo as
// stdout (the guest's serial console, drained by a ConsoleCapture into
// <vm_dir>/console.log, size-capped) and <vm_dir>/firecracker.stderr as
// stderr. A FIFO rather than a pipe so that the next fcvmd can take over the
// reading (ReattachConsole) of a Firecracker that outlived the previous one.
// While nobody reads, Firecracker's serial writes fail with EPIPE, which it
// survives (it handles SIGPIPE): that output is lost, the guest never stalls. Firecracker's own log goes to
// <vm_dir>/firecracker.log and its metrics to <vm_dir>/metrics.json (both
// given on the command line, so nothing is logged to the console even before
// the API is up). The API socket is <vm_dir>/api.sock; Launch returns once it
// answers GET / (polled with backoff while watching the pidfd, so an early
// exit is reported at once, with the process's last output).
//
// Per-VM mount namespace: with `bind_mounts`, Firecracker runs in a private
// mount namespace where each bind mount is applied before exec. A snapshot
// bakes in the host paths of its drives and Firecracker has no override for
// them, so a clone binds its private copy of each disk over the original path:
// every clone opens "the same" path and gets its own file. The namespace, and
// the mounts in it, vanish with the process; nothing shows on the host.
//
// Destroying a Vmm (or Kill) SIGKILLs and reaps Firecracker, stops the console
// drain and removes the API socket. Log files stay in vm_dir (the caller owns
// that directory).
//
// Jailed mode (VmmOptions::jail, see jail.h): Firecracker is started through
// the jailer, as its own uid/gid, chrooted in <base>/firecracker/<id>/root,
// in its own cgroups and (by default) as PID 1 of a new PID namespace. The
// Vmm then differs only in paths: every path given to the API (BootSpec,
// SnapshotLoad, SnapshotCreate) is a jail path ("/vmlinux"), mapped to the
// host by HostPath/JailPath; the API socket is <chroot>/run/firecracker.socket;
// firecracker.log and metrics.json stay in vm_dir (owned by the VM's uid,
// 0600) and are linked into the chroot. console.log and firecracker.stderr
// are written by fcvm as before (root, 0640). Kill also removes the jail: the
// chroot with everything in it, and the VM's cgroups. Firecracker as PID 1 of
// its namespace ignores SIGTERM: Kill is SIGKILL, and there is no graceful
// stop from the host (SendCtrlAltDel needs a guest with an i8042 driver).
//
// Thread-safety: a Vmm is driven by one thread at a time (the console may be
// read from any thread).

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lib/base/process.h"
#include "lib/firecracker/api_client.h"
#include "lib/firecracker/api_types.h"
#include "lib/firecracker/cgroup.h"
#include "lib/firecracker/console.h"
#include "lib/firecracker/jail.h"
#include "lib/firecracker/version.h"

namespace fcvm::firecracker {

// A Firecracker executable whose version was checked.
class FirecrackerBinary {
 public:
  // Runs `path --version` (killed at `timeout`) and checks the version.
  // Errors: InvalidArgument for an empty path; NotFound when `path` does not
  // exist; PermissionDenied when it is not an executable file;
  // FailedPrecondition when it is older than 1.12, or when --version fails or
  // prints no version (the message quotes its output); DeadlineExceeded.
  // Also asks for the snapshot data format (--snapshot-version); a binary
  // that cannot tell is not refused (snapshot_format() is then 0.0.0).
  static absl::StatusOr<FirecrackerBinary> Probe(const std::string& path,
                                                 absl::Duration timeout = absl::Seconds(5));

  const std::string& path() const { return path_; }
  const Version& version() const { return version_; }
  // The snapshot data format it writes ("8.0.0" for 1.14); 0.0.0 when unknown.
  const Version& snapshot_format() const { return snapshot_format_; }

 private:
  FirecrackerBinary(std::string path, Version version, Version snapshot_format)
      : path_(std::move(path)), version_(std::move(version)), snapshot_format_(std::move(snapshot_format)) {}
  std::string path_;
  Version version_;
  Version snapshot_format_;
};

// <vm_dir>/console.fifo: where a Firecracker started by Vmm::Launch writes
// its serial console.
std::string ConsoleFifoPath(const std::string& vm_dir);
// Opens the console FIFO of `vm_dir` for reading (blocking reads), making a
// new one first if `create`. FailedPrecondition when it is not a FIFO.
absl::StatusOr<UniqueFd> OpenConsoleFifo(const std::string& vm_dir, bool create);
// Captures again the console of a Firecracker that runs on without its Vmm
// (one a previous fcvmd launched): appends to <vm_dir>/console.log, capped
// at `max_log_bytes` as before. The capture closes when Firecracker exits.
absl::StatusOr<std::unique_ptr<ConsoleCapture>> ReattachConsole(const std::string& vm_dir,
                                                                size_t max_log_bytes,
                                                                size_t ring_lines = 200);

// Firecracker runs with the VM directory (unjailed) or its chroot (jailed)
// as its working directory, so that a relative path it is given is per VM.
struct VmmOptions {
  // Holds api.sock, console.log, firecracker.log, firecracker.stderr and
  // metrics.json; created if missing. "<vm_dir>/api.sock" must fit in
  // sockaddr_un (107 bytes).
  std::string vm_dir;
  // Firecracker's --id: 1-64 characters of [A-Za-z0-9-].
  std::string id = "fcvm";
  // Process start to API answering.
  absl::Duration start_timeout = absl::Seconds(10);
  // Default deadline of each API call.
  absl::Duration api_timeout = absl::Seconds(10);
  size_t console_max_bytes = 1 << 20;
  size_t console_ring_lines = 200;
  std::string log_level = "Info";
  // Run Firecracker in this network namespace (an fd from /run/netns/x).
  int netns_fd = -1;
  // Private mount namespace with these bind mounts (targets must exist).
  // Not with `jail` (put the files in the jail instead).
  std::vector<BindMount> bind_mounts;
  bool new_mount_namespace = false;  // implied by bind_mounts
  // Signal Firecracker gets when the launching thread dies; 0 = none.
  int parent_death_signal = 0;
  // Guest memory (all of Firecracker's anonymous memory) mergeable by KSM:
  // PR_SET_MEMORY_MERGE set just before exec (SpawnOptions::memory_merge;
  // inherited through the jailer). Merging happens only while ksmd runs.
  bool memory_merge = false;
  // More Firecracker arguments.
  std::vector<std::string> extra_args;
  // Start Firecracker through the jailer (see jail.h).
  std::optional<JailOptions> jail;
};

// What Vmm::Boot configures before InstanceStart.
struct BootSpec {
  BootSource boot_source;
  MachineConfig machine;
  std::vector<Drive> drives;
  std::vector<NetworkInterface> network_interfaces;
  // MMDS: which interfaces reach it (needs one of network_interfaces), and
  // what it holds at the first instruction.
  std::optional<MmdsConfig> mmds_config;
  std::optional<std::string> mmds_data;
  std::optional<VsockDevice> vsock;
};

class Vmm {
 public:
  // Spawns Firecracker and waits for its API. On any error nothing is left
  // running and the socket is removed; an early exit is reported as
  // Unavailable with the exit status and the last log/console lines.
  static absl::StatusOr<std::unique_ptr<Vmm>> Launch(const FirecrackerBinary& binary, VmmOptions options);

  ~Vmm();
  Vmm(const Vmm&) = delete;
  Vmm& operator=(const Vmm&) = delete;

  ApiClient& api() { return *api_; }
  ConsoleCapture& console() { return *console_; }
  const VmmOptions& options() const { return options_; }
  pid_t pid() const { return process_.pid(); }
  int pidfd() const { return process_.pidfd(); }
  const std::string& api_socket_path() const { return api_socket_path_; }
  const std::string& console_log_path() const { return console_log_path_; }
  const std::string& log_path() const { return log_path_; }
  const std::string& metrics_path() const { return metrics_path_; }
  // Process start until the API answered.
  absl::Duration startup_time() const { return startup_time_; }

  // Checks the kernel (exists, is ELF), then PUTs boot source, machine
  // config, drives and network interfaces and starts the instance. Errors
  // name the culprit: "kernel /x: not an ELF image ...", "PUT /drives/rootfs: ...".
  // Jailed: InvalidArgument first when the cgroup limits are below what the
  // machine config needs (CheckLimitsForGuest).
  absl::Status Boot(const BootSpec& spec);

  // Checks that the snapshot files exist and are not empty (as Firecracker
  // sees them), then loads. Jailed, File backend: InvalidArgument first when
  // the memory limit is below the memory file's size + Firecracker's own.
  // Firecracker exits after any failed load: the error then also carries its
  // exit status and last output, and this Vmm is finished (Kill it).
  absl::Status LoadSnapshot(const SnapshotLoad& load, absl::Duration timeout = ApiClient::kDefault);

  // Creates a snapshot of the paused VM; Firecracker errors are Explain()ed.
  absl::Status CreateSnapshot(const SnapshotCreate& create, absl::Duration timeout = ApiClient::kDefault);

  // OK while Firecracker runs; Unavailable ("firecracker <id> (pid N) exited:
  // exit code 1; ...") once it has exited.
  absl::Status CheckRunning();

  // For an error from an API call: if Firecracker has exited (waiting up to
  // `grace` for it, at least 200 ms for Unavailable), returns the error with
  // its exit status and last output appended; otherwise `status` unchanged.
  absl::Status Explain(const absl::Status& status, absl::Duration grace = absl::ZeroDuration());

  // The last lines of Firecracker's log and stderr and of the console, for
  // error messages.
  std::string RecentOutput();

  // SIGKILL (if still running), reap, stop the console drain, remove the API
  // socket; jailed, also remove the jail (RemoveJail: chroot and cgroups).
  // Idempotent (a failed jail removal is retried by the next call). Returns
  // how the process ended.
  absl::StatusOr<ExitStatus> Kill();

  // Lets Firecracker outlive this Vmm (a daemon restart re-adopts it by pid):
  // stops capturing the console (after draining what is buffered; its
  // later serial output is lost until someone calls ReattachConsole) and
  // gives up the process without killing it. The API
  // socket and the jail stay. Returns the pid. The Vmm is finished afterwards.
  pid_t Detach();

  // ---- jailed mode

  bool jailed() const { return options_.jail.has_value(); }
  // The jail's paths (empty when not jailed).
  const JailPaths& jail_paths() const { return jail_paths_; }
  // Jail path <-> host path (see JailPaths). Not jailed: the path unchanged.
  absl::StatusOr<std::string> HostPath(const std::string& vmm_path) const;
  absl::StatusOr<std::string> JailPath(const std::string& host_path) const;
  // Puts one more file into the running jail (a hard link only: see
  // PlaceFile with allow_bind = false). FailedPrecondition when not jailed.
  absl::Status PlaceFile(const JailFile& file);
  // The VM's cgroup settings and their current values.
  const CgroupPlan& cgroup_plan() const { return cgroup_plan_; }
  absl::StatusOr<CgroupLimits> ReadCgroupLimits() const;
  // Changes the limits of the running VM (a warm-pool entry becoming a VM):
  // writes the settings `limits` makes into the VM's cgroup files; limits
  // left 0 keep their current value. FailedPrecondition when not jailed or
  // when `limits` needs a controller the VM's cgroups were not created with;
  // InvalidArgument as PlanCgroups; the kernel's errors (a v1 memory limit
  // below current usage: EBUSY).
  absl::Status UpdateCgroupLimits(const CgroupLimits& limits);

 private:
  Vmm() = default;
  absl::Status WaitForApi(absl::Time start);
  std::string ExitDescription(const ExitStatus& exit) const;
  absl::Status PrepareJailedSpawn(const FirecrackerBinary& binary, const VmmOptions& options,
                                  SpawnOptions* spawn);
  // `path` as Firecracker resolves it (through /proc/<pid>/root: its chroot
  // or mount namespace), for the checks before API calls.
  std::string SeenByVmm(const std::string& path) const;
  // "path" or "path (host: /x/root/path)" for error messages.
  std::string Describe(const std::string& path) const;

  VmmOptions options_;
  std::string api_socket_path_;
  std::string console_log_path_;
  std::string log_path_;
  std::string stderr_path_;
  std::string metrics_path_;
  Process process_;
  std::unique_ptr<ConsoleCapture> console_;
  std::unique_ptr<ApiClient> api_;
  absl::Duration startup_time_;
  std::optional<ExitStatus> exit_;
  // Jailed mode.
  JailPaths jail_paths_;
  CgroupHost cgroup_host_;
  CgroupPlan cgroup_plan_;
  bool owns_jail_ = false;  // Kill removes the jail
};

// Checks that `path` is a readable ELF file (what Firecracker boots on x86_64).
// NotFound / PermissionDenied from open; InvalidArgument naming the file and
// its first bytes otherwise.
absl::Status CheckKernelImage(const std::string& path);

}  // namespace fcvm::firecracker
