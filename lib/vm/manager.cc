#include "lib/vm/manager.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/base/file_util.h"
#include "lib/base/logging.h"
#include "lib/base/status.h"
#include "lib/vm/core.h"
#include "lib/vm/real_env.h"
#include "lib/vm/validate.h"
#include "lib/vm/vm_usage.h"
#include "spdlog/spdlog.h"

namespace fcvm::vm {

absl::StatusOr<std::unique_ptr<Manager>> Manager::Create(const ManagerOptions& options) {
  if (options.state_dir.empty() || options.state_dir[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("state dir must be an absolute path, got '", options.state_dir, "'"));
  }
  RealEnvOptions real;
  real.state_dir = options.state_dir;
  real.firecracker_bin = options.firecracker_bin;
  real.jailer_bin = options.jailer_bin;
  real.jail_dir = options.jail_dir.empty() ? options.state_dir + "/jail" : options.jail_dir;
  real.page_server_threads = options.page_server_threads;
  real.start_timeout = options.clone_timeout;
  real.console_max_bytes = options.console_max_bytes;
  real.networking = options.networking;
  real.network_pool = options.network_pool;
  real.network_prefix = options.network_prefix;
  real.network_uplink = options.network_uplink;
  ASSIGN_OR_RETURN(Env env, CreateRealEnv(real));
  return Create(options, std::move(env));
}

absl::StatusOr<std::unique_ptr<Manager>> Manager::Create(const ManagerOptions& options, Env env) {
  if (options.state_dir.empty() || options.state_dir[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("state dir must be an absolute path, got '", options.state_dir, "'"));
  }
  if (env.pager == nullptr || env.network == nullptr || env.host == nullptr) {
    return absl::InvalidArgumentError("manager env: page server, network and host are required");
  }
  auto core = std::make_unique<Core>(options, std::move(env));
  Core& c = *core;
  ASSIGN_OR_RETURN(c.metrics, VmMetrics::Create(options.metrics_registry));
  c.env.network = c.metrics->Wrap(std::move(c.env.network));
  RETURN_IF_ERROR(MakeDirs(c.vms_dir, 0700));
  RETURN_IF_ERROR(MakeDirs(c.drives_dir, 0700));
  ASSIGN_OR_RETURN(c.store, storage::SnapshotStore::Open(options.state_dir + "/snapshots"));
  c.clone_executor = std::make_unique<Executor>("fcvm-clone", std::max<uint32_t>(options.clone_threads, 1));
  c.leaf_executor = std::make_unique<Executor>("fcvm-leaf", 8);
  ASSIGN_OR_RETURN(c.supervisor, Supervisor::Create(c.leaf_executor.get()));
  if (c.jailed()) {
    ASSIGN_OR_RETURN(c.uids,
                     firecracker::UidPool::Open(options.state_dir + "/jail-uids.json",
                                                {.base = options.uid_base, .count = options.uid_count}));
  }
  Core* raw = core.get();
  c.env.pager->SetEventCallback([raw](const uffd::SessionEvent& ev) { raw->OnPagerEvent(ev); });
  if (options.reconcile) Reconcile(c);
  // A pooled jailed process gets the limits of the VM that takes it later;
  // until then, room for any (every controller must exist to be set later).
  firecracker::CgroupLimits pooled;
  pooled.memory_bytes = uint64_t{kMaxMemoryMib} << 20;
  pooled.cpu_quota_us = uint64_t{kMaxVcpus} * 100000;
  pooled.cpu_period_us = 100000;
  pooled.pids_max = 4096;
  c.warm = std::make_unique<WarmPool>(
      c.env.vmms.get(), c.vms_dir, options.warm_pool_size,
      [raw, pooled](const std::string& id, const std::string& dir) {
        return raw->LaunchSpecFor(id, dir, pooled);
      },
      [raw](const std::string& id) { raw->ReleaseJail(id); });
  RETURN_IF_ERROR(c.metrics->AddCallbacks(raw));
  return std::unique_ptr<Manager>(new Manager(std::move(core)));
}

Manager::Manager(std::unique_ptr<Core> core) : core_(std::move(core)) {}

Manager::~Manager() {
  Core& c = *core_;
  // No scrape reads the core from here on.
  c.metrics->RemoveCallbacks();
  c.operations.Shutdown(absl::UnavailableError("fcvmd is shutting down"));
  c.supervisor->Stop();
  c.leaf_executor->Stop();  // exit handlers already queued run first
  LeaveVms(c);
  c.warm->Stop();
  c.clone_executor->Stop();
  c.env.pager->Stop();
}

// What happens to each VM when the manager goes away.
void LeaveVms(Core& core) {
  bool networks_left = false;
  for (const std::shared_ptr<VmEntry>& e : core.registry.All()) {
    absl::MutexLock op(&e->op);
    VmInfo info = core.registry.Info(*e);
    if (e->vmm == nullptr) continue;
    // Every VM is left running for the next fcvmd to re-adopt; a UFFD
    // clone's faults wait for its page server to take the session over.
    const bool served = e->listener.has_value();
    if (served) {
      if (absl::Status st = core.env.pager->DetachListener(*e->listener); !st.ok()) {
        spdlog::warn("vm {}: detach from the page server: {}", info.id, st);
      }
      e->listener.reset();
    }
    spdlog::info("vm {}: left running (pid {}) for re-adoption{}", info.id, info.pid,
                 served ? "; its page faults wait for the next fcvmd" : "");
    e->vmm->Release();
    e->vmm.reset();
    networks_left |= !info.network.netns.empty();
  }
  // The shared host rules go with the last VM network (the next fcvmd puts
  // them back at start).
  if (!networks_left) {
    if (absl::Status st = core.env.network->RemoveHostRules(); !st.ok()) spdlog::warn("network: {}", st);
  }
}

absl::StatusOr<VmInfo> Manager::Run(const RunRequest& request, const CancelToken& cancel) {
  ASSIGN_OR_RETURN(Operations::Op op, core_->operations.Begin(cancel));
  return RunVm(*core_, request, op.token());
}

absl::StatusOr<VmInfo> Manager::Get(const std::string& ref) const {
  ASSIGN_OR_RETURN(std::shared_ptr<VmEntry> e, core_->registry.Find(ref));
  return core_->registry.Info(*e);
}

std::vector<VmInfo> Manager::List(const ListFilter& filter) const {
  std::string snapshot_id;
  if (!filter.snapshot_ref.empty()) {
    absl::StatusOr<storage::SnapshotRecord> snap = core_->store->Get(filter.snapshot_ref);
    snapshot_id = snap.ok() ? snap->id : filter.snapshot_ref;
  }
  return core_->registry.List(filter.label_selector, filter.states, snapshot_id);
}

absl::StatusOr<std::string> Manager::GetMetadata(const std::string& ref) {
  ASSIGN_OR_RETURN(Operations::Op op, core_->operations.Begin({}));
  return vm::GetMetadata(*core_, ref);
}

absl::StatusOr<std::string> Manager::SetMetadata(const std::string& ref, const std::string& user_json) {
  ASSIGN_OR_RETURN(Operations::Op op, core_->operations.Begin({}));
  return vm::SetMetadata(*core_, ref, user_json);
}

absl::StatusOr<VmInfo> Manager::Pause(const std::string& ref) {
  ASSIGN_OR_RETURN(Operations::Op op, core_->operations.Begin({}));
  return SetPaused(*core_, ref, true);
}

absl::StatusOr<VmInfo> Manager::Resume(const std::string& ref) {
  ASSIGN_OR_RETURN(Operations::Op op, core_->operations.Begin({}));
  return SetPaused(*core_, ref, false);
}

absl::StatusOr<DeleteResult> Manager::Delete(const std::string& ref, bool force, absl::Duration grace) {
  ASSIGN_OR_RETURN(Operations::Op op, core_->operations.Begin({}));
  ASSIGN_OR_RETURN(std::shared_ptr<VmEntry> e, core_->registry.Find(ref));
  return DeleteVm(*core_, e, force, grace);
}

absl::StatusOr<SnapshotInfo> Manager::CreateSnapshot(const SnapshotRequest& request,
                                                     const CancelToken& cancel) {
  ASSIGN_OR_RETURN(Operations::Op op, core_->operations.Begin(cancel));
  absl::StatusOr<SnapshotInfo> info = vm::CreateSnapshot(*core_, request, op.token());
  core_->metrics->SnapshotCreated(info.status(), info.ok() ? info->create_duration : absl::ZeroDuration(),
                                  info.ok() ? info->memory_bytes + info->vmstate_bytes : 0);
  return info;
}

absl::StatusOr<SnapshotInfo> Manager::GetSnapshot(const std::string& ref) const {
  ASSIGN_OR_RETURN(storage::SnapshotRecord r, core_->store->Get(ref));
  return DescribeSnapshot(*core_, r);
}

std::vector<SnapshotInfo> Manager::ListSnapshots(const Labels& selector) const {
  std::vector<SnapshotInfo> out;
  for (const storage::SnapshotRecord& r : core_->store->List()) {
    bool match = true;
    for (const auto& [k, v] : selector) {
      auto it = r.labels.find(k);
      match &= it != r.labels.end() && it->second == v;
    }
    if (match) out.push_back(DescribeSnapshot(*core_, r));
  }
  std::sort(out.begin(), out.end(), [](const SnapshotInfo& a, const SnapshotInfo& b) {
    return a.created_at != b.created_at ? a.created_at < b.created_at : a.id < b.id;
  });
  return out;
}

absl::StatusOr<DeleteSnapshotResult> Manager::DeleteSnapshot(const std::string& ref, bool force) {
  ASSIGN_OR_RETURN(Operations::Op op, core_->operations.Begin({}));
  return vm::DeleteSnapshot(*core_, ref, force);
}

absl::StatusOr<CloneResult> Manager::Clone(const CloneRequest& request, const CancelToken& cancel) {
  ASSIGN_OR_RETURN(Operations::Op op, core_->operations.Begin(cancel));
  return CloneVms(*core_, request, op.token());
}

absl::StatusOr<ForkResult> Manager::Fork(const ForkRequest& request, const CancelToken& cancel) {
  ASSIGN_OR_RETURN(Operations::Op op, core_->operations.Begin(cancel));
  absl::StatusOr<ForkResult> out = ForkVm(*core_, request, op.token());
  if (out.ok()) {
    core_->metrics->SnapshotCreated(absl::OkStatus(), out->source_pause,
                                    out->snapshot.memory_allocated_bytes + out->snapshot.vmstate_bytes);
  }
  return out;
}

uffd::ServerStats Manager::PageServerStats() const { return core_->env.pager->GetStats(); }

std::map<std::string, VmUsage> Manager::Usage(const std::vector<std::string>& ids, bool pss) const {
  return CollectUsage(*core_, ids, pss);
}

uint64_t Manager::Subscribe(std::function<void(const Event&)> callback,
                            std::optional<uint64_t> replay_after) {
  return core_->events.Subscribe(std::move(callback), replay_after);
}

void Manager::Unsubscribe(uint64_t token) { core_->events.Unsubscribe(token); }

const ManagerOptions& Manager::options() const { return core_->options; }

std::string Manager::isolation() const {
  return core_->env.vmms != nullptr ? core_->env.vmms->isolation() : "none";
}

std::string Manager::firecracker_version() const {
  return core_->env.vmms != nullptr ? core_->env.vmms->version() : "";
}

size_t Manager::warm_pool_ready() const { return core_->warm->ready(); }

uint64_t Manager::warm_pool_misses() const { return core_->warm->misses(); }

}  // namespace fcvm::vm
