#include "lib/vm/core.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/base/logging.h"
#include "lib/base/status.h"
#include "spdlog/spdlog.h"

namespace fcvm::vm {

// ---- Operations ---------------------------------------------------------------

Operations::Op& Operations::Op::operator=(Op&& other) noexcept {
  if (this != &other) {
    if (ops_ != nullptr) ops_->End(id_);
    ops_ = std::exchange(other.ops_, nullptr);
    id_ = other.id_;
    token_ = std::move(other.token_);
  }
  return *this;
}

Operations::Op::~Op() {
  if (ops_ != nullptr) ops_->End(id_);
}

absl::StatusOr<Operations::Op> Operations::Begin(const CancelToken& caller) {
  RETURN_IF_ERROR(caller.Check());
  absl::MutexLock lock(&mu_);
  if (shutting_down_) return why_;
  auto source = std::make_shared<CancelSource>(caller);
  Op op;
  op.ops_ = this;
  op.id_ = next_id_++;
  op.token_ = source->token();
  running_[op.id_] = std::move(source);
  return op;
}

void Operations::End(uint64_t id) {
  absl::MutexLock lock(&mu_);
  running_.erase(id);
}

void Operations::Shutdown(const absl::Status& why) {
  absl::MutexLock lock(&mu_);
  if (!shutting_down_) {
    shutting_down_ = true;
    why_ = why;
    for (auto& [id, source] : running_) source->Cancel(why);
  }
  mu_.Await(absl::Condition(
      +[](std::map<uint64_t, std::shared_ptr<CancelSource>>* m) { return m->empty(); }, &running_));
}

bool Operations::shutting_down() const {
  absl::MutexLock lock(&mu_);
  return shutting_down_;
}

// ---- Core -----------------------------------------------------------------------

Core::Core(const ManagerOptions& o, Env e)
    : options(o),
      env(std::move(e)),
      vms_dir(o.state_dir + "/vms"),
      drives_dir(o.state_dir + "/drives"),
      events(o.event_backlog),
      registry(vms_dir, env.host.get(), &events) {}

absl::Status Core::RequireVmms() const {
  if (env.vmms == nullptr) {
    return absl::UnavailableError(
        "no Firecracker binary configured: start fcvmd with --firecracker PATH or FCVM_FIRECRACKER_BIN");
  }
  return absl::OkStatus();
}

// A snapshot bakes in its drives' paths, so each clone must find its own
// copy at "the same" path. A jailed VM has them at /drives/<id> in its own
// chroot. An unjailed one runs in its own mount namespace in which its private
// directory <vm dir>/drives is bind-mounted over the fixed <state>/drives.
absl::StatusOr<LaunchSpec> Core::LaunchSpecFor(const std::string& id, const std::string& dir,
                                               const firecracker::CgroupLimits& limits,
                                               bool has_drives) const {
  LaunchSpec spec;
  spec.id = id;
  spec.vm_dir = dir;
  if (jailed()) {
    absl::StatusOr<uint32_t> uid = uids->Lease(id);
    if (!uid.ok()) return Annotate(uid.status(), "uid for the VM's jail");
    spec.jail = JailSpec{.uid = *uid, .gid = *uid, .limits = limits};
  } else if (has_drives) {
    spec.bind_mounts = {{dir + "/drives", drives_dir, false}};
  }
  spec.memory_merge = options.memory_merge;
  return spec;
}

std::string Core::DrivePath(const std::string& drive_id) const {
  return jailed() ? "/drives/" + drive_id : drives_dir + "/" + drive_id;
}

void Core::ReleaseJail(const std::string& id) {
  if (!jailed()) return;
  if (absl::Status st = env.vmms->RemoveJail(id); !st.ok())
    spdlog::warn("vm {}: removing its jail: {}", id, st);
  if (absl::Status st = uids->Release(id); !st.ok()) spdlog::warn("vm {}: releasing its uid: {}", id, st);
}

std::vector<firecracker::Drive> Core::FirecrackerDrives(const VmConfig& config) const {
  std::vector<firecracker::Drive> out;
  for (const DriveConfig& d : config.drives) {
    firecracker::Drive fd;
    fd.drive_id = d.drive_id;
    fd.path_on_host = DrivePath(d.drive_id);
    fd.is_root_device = d.is_root_device;
    fd.is_read_only = d.read_only;
    out.push_back(fd);
  }
  return out;
}

void Core::Watch(const std::shared_ptr<VmEntry>& entry) {
  if (entry->vmm == nullptr) return;
  std::string id = registry.Info(*entry).id;
  entry->watch =
      supervisor->Watch(entry->vmm->pidfd(), [this, id](uint64_t watch) { HandleExit(*this, id, watch); });
}

void Core::Unwatch(VmEntry& entry) {
  supervisor->Unwatch(entry.watch);
  entry.watch = 0;
}

void Core::ReleaseResources(VmEntry& entry) {
  Unwatch(entry);
  VmInfo info = registry.Info(entry);
  if (entry.listener.has_value()) {
    (void)env.pager->RemoveListener(*entry.listener);
    entry.listener.reset();
  }
  if (entry.vmm != nullptr) {
    (void)entry.vmm->Kill();
    entry.vmm.reset();
  }
  ReleaseJail(info.id);
  if (!info.network.netns.empty()) {
    if (absl::Status st = env.network->Teardown(info.id); !st.ok()) {
      spdlog::warn("vm {}: network teardown: {}", info.id, st);
    }
  }
  registry.Update(entry, [](VmInfo& v) {
    v.pid = 0;
    v.network = NetworkStatus{};
  });
}

void Core::OnPagerEvent(const uffd::SessionEvent& ev) {
  if (ev.kind != uffd::SessionEventKind::kFailed && ev.kind != uffd::SessionEventKind::kRejected) return;
  metrics->SessionDropped(ev.kind);
  {
    absl::MutexLock lock(&pager_mu);
    pager_errors[ev.tag] = std::string(ev.status.message());
  }
  Event out;
  out.kind = EventKind::kPageServerDrop;
  out.vm_id = ev.tag;
  out.message = absl::StrCat("page server ", uffd::SessionEventKindName(ev.kind), ": ", ev.status.message(),
                             ev.peer_killed ? " (firecracker killed)" : "");
  Publish(std::move(out));
}

}  // namespace fcvm::vm
