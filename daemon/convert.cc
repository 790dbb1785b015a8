#include "daemon/convert.h"

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"

namespace fcvm::daemon {
namespace {

using google::protobuf::util::TimeUtil;
namespace v1 = fcvm::v1;

std::map<std::string, std::string> ToMap(const google::protobuf::Map<std::string, std::string>& m) {
  return std::map<std::string, std::string>(m.begin(), m.end());
}

void ToProtoMap(const std::map<std::string, std::string>& m,
                google::protobuf::Map<std::string, std::string>* out) {
  out->clear();
  for (const auto& [k, v] : m) (*out)[k] = v;
}

}  // namespace

void ToProto(absl::Duration d, google::protobuf::Duration* out) {
  *out = TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(d));
}

void ToProto(absl::Time t, google::protobuf::Timestamp* out) {
  *out = TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}

absl::Duration FromProto(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

v1::VmState ToProto(vm::VmState state) {
  switch (state) {
    case vm::VmState::kCreating:
      return v1::VM_STATE_CREATING;
    case vm::VmState::kRunning:
      return v1::VM_STATE_RUNNING;
    case vm::VmState::kPaused:
      return v1::VM_STATE_PAUSED;
    case vm::VmState::kStopping:
      return v1::VM_STATE_STOPPING;
    case vm::VmState::kStopped:
      return v1::VM_STATE_STOPPED;
    case vm::VmState::kFailed:
      return v1::VM_STATE_FAILED;
  }
  return v1::VM_STATE_UNSPECIFIED;
}

absl::StatusOr<vm::VmState> FromProto(v1::VmState state) {
  switch (state) {
    case v1::VM_STATE_CREATING:
      return vm::VmState::kCreating;
    case v1::VM_STATE_RUNNING:
      return vm::VmState::kRunning;
    case v1::VM_STATE_PAUSED:
      return vm::VmState::kPaused;
    case v1::VM_STATE_STOPPING:
      return vm::VmState::kStopping;
    case v1::VM_STATE_STOPPED:
      return vm::VmState::kStopped;
    case v1::VM_STATE_FAILED:
      return vm::VmState::kFailed;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown VM state ", static_cast<int>(state)));
  }
}

v1::MemoryBackend ToProto(vm::MemoryBackend backend) {
  switch (backend) {
    case vm::MemoryBackend::kUffd:
      return v1::MEMORY_BACKEND_UFFD;
    case vm::MemoryBackend::kFile:
      return v1::MEMORY_BACKEND_FILE;
  }
  return v1::MEMORY_BACKEND_UNSPECIFIED;
}

absl::StatusOr<vm::MemoryBackend> FromProto(v1::MemoryBackend backend) {
  switch (backend) {
    case v1::MEMORY_BACKEND_UNSPECIFIED:
    case v1::MEMORY_BACKEND_UFFD:
      return vm::MemoryBackend::kUffd;
    case v1::MEMORY_BACKEND_FILE:
      return vm::MemoryBackend::kFile;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown memory backend ", static_cast<int>(backend)));
  }
}

v1::PrefetchPolicy ToProto(vm::ClonePolicy policy) {
  switch (policy) {
    case vm::ClonePolicy::kNone:
      return v1::PREFETCH_POLICY_NONE;
    case vm::ClonePolicy::kRecord:
      return v1::PREFETCH_POLICY_RECORD;
    case vm::ClonePolicy::kPrefetch:
      return v1::PREFETCH_POLICY_PREFETCH;
    case vm::ClonePolicy::kAuto:
      return v1::PREFETCH_POLICY_AUTO;
  }
  return v1::PREFETCH_POLICY_UNSPECIFIED;
}

absl::StatusOr<vm::ClonePolicy> FromProto(v1::PrefetchPolicy policy) {
  switch (policy) {
    case v1::PREFETCH_POLICY_NONE:
      return vm::ClonePolicy::kNone;
    case v1::PREFETCH_POLICY_RECORD:
      return vm::ClonePolicy::kRecord;
    case v1::PREFETCH_POLICY_PREFETCH:
      return vm::ClonePolicy::kPrefetch;
    case v1::PREFETCH_POLICY_UNSPECIFIED:
    case v1::PREFETCH_POLICY_AUTO:
      return vm::ClonePolicy::kAuto;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown prefetch policy ", static_cast<int>(policy)));
  }
}

absl::StatusOr<vm::AfterSnapshot> FromProto(v1::AfterSnapshot after) {
  switch (after) {
    case v1::AFTER_SNAPSHOT_UNSPECIFIED:
    case v1::AFTER_SNAPSHOT_RESUME:
      return vm::AfterSnapshot::kResume;
    case v1::AFTER_SNAPSHOT_STAY_PAUSED:
      return vm::AfterSnapshot::kStayPaused;
    case v1::AFTER_SNAPSHOT_STOP:
      return vm::AfterSnapshot::kStop;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown after-snapshot action ", static_cast<int>(after)));
  }
}

v1::Event::Kind ToProto(vm::EventKind kind) {
  switch (kind) {
    case vm::EventKind::kVmState:
      return v1::Event::KIND_VM_STATE;
    case vm::EventKind::kSnapshotCreated:
      return v1::Event::KIND_SNAPSHOT_CREATED;
    case vm::EventKind::kSnapshotDeleted:
      return v1::Event::KIND_SNAPSHOT_DELETED;
    case vm::EventKind::kPageServerDrop:
      return v1::Event::KIND_PAGE_SERVER_DROP;
    case vm::EventKind::kReconcile:
      return v1::Event::KIND_RECONCILE;
  }
  return v1::Event::KIND_UNSPECIFIED;
}

absl::StatusOr<vm::VmConfig> FromProto(const v1::VmConfig& config) {
  vm::VmConfig out;
  out.kernel_path = config.kernel_path();
  out.initrd_path = config.initrd_path();
  out.boot_args = config.boot_args();
  out.vcpu_count = config.vcpu_count();
  out.memory_mib = config.memory_mib();
  out.drives.reserve(static_cast<size_t>(config.drives_size()));
  for (const v1::Drive& d : config.drives()) {
    out.drives.push_back(vm::DriveConfig{d.drive_id(), d.path(), d.is_root_device(), d.read_only()});
  }
  out.network.enabled = config.network().enabled();
  out.network.guest_mac = config.network().guest_mac();
  absl::StatusOr<std::vector<vm::PortMapping>> publish =
      FromProto(config.network().publish(), "config.network");
  if (!publish.ok()) return publish.status();
  out.network.publish = *std::move(publish);
  out.mmds_version = config.mmds_version();
  out.vsock.enabled = config.vsock().enabled();
  out.vsock.guest_cid = config.vsock().guest_cid();
  out.limits = FromProto(config.limits());
  switch (config.huge_pages()) {
    case v1::HUGE_PAGES_UNSPECIFIED:
    case v1::HUGE_PAGES_NONE:
      out.huge_pages = vm::HugePages::kNone;
      break;
    case v1::HUGE_PAGES_2M:
      out.huge_pages = vm::HugePages::k2M;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("config.huge_pages: unknown value ", static_cast<int>(config.huge_pages())));
  }
  return out;
}

vm::ResourceLimits FromProto(const v1::ResourceLimits& limits) {
  return vm::ResourceLimits{.memory_mib = limits.memory_mib(),
                            .cpu_percent = limits.cpu_percent(),
                            .cpu_weight = limits.cpu_weight(),
                            .pids_max = limits.pids_max()};
}

void ToProto(const vm::ResourceLimits& limits, v1::ResourceLimits* out) {
  out->set_memory_mib(limits.memory_mib);
  out->set_cpu_percent(limits.cpu_percent);
  out->set_cpu_weight(limits.cpu_weight);
  out->set_pids_max(limits.pids_max);
}

absl::StatusOr<std::vector<vm::PortMapping>> FromProto(
    const google::protobuf::RepeatedPtrField<v1::PortMapping>& publish, absl::string_view field) {
  std::vector<vm::PortMapping> out;
  for (int i = 0; i < publish.size(); ++i) {
    const v1::PortMapping& p = publish[i];
    // The domain holds 16-bit ports; anything wider would silently wrap.
    if (p.host_port() > 65535 || p.guest_port() > 65535) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".publish[", i, "]: ports must be 1-65535, got ",
                                                     p.host_port(), ":", p.guest_port()));
    }
    out.push_back(vm::PortMapping{static_cast<uint16_t>(p.host_port()), static_cast<uint16_t>(p.guest_port()),
                                  p.protocol().empty() ? "tcp" : p.protocol()});
  }
  return out;
}

void ToProto(const std::vector<vm::PortMapping>& publish,
             google::protobuf::RepeatedPtrField<v1::PortMapping>* out) {
  out->Clear();
  for (const vm::PortMapping& p : publish) {
    v1::PortMapping* m = out->Add();
    m->set_host_port(p.host_port);
    m->set_guest_port(p.guest_port);
    m->set_protocol(p.protocol);
  }
}

void ToProto(const vm::VmConfig& config, v1::VmConfig* out) {
  out->Clear();
  out->set_kernel_path(config.kernel_path);
  out->set_initrd_path(config.initrd_path);
  out->set_boot_args(config.boot_args);
  out->set_vcpu_count(config.vcpu_count);
  out->set_memory_mib(config.memory_mib);
  for (const vm::DriveConfig& d : config.drives) {
    v1::Drive* drive = out->add_drives();
    drive->set_drive_id(d.drive_id);
    drive->set_path(d.path);
    drive->set_is_root_device(d.is_root_device);
    drive->set_read_only(d.read_only);
  }
  out->mutable_network()->set_enabled(config.network.enabled);
  out->mutable_network()->set_guest_mac(config.network.guest_mac);
  ToProto(config.network.publish, out->mutable_network()->mutable_publish());
  out->set_mmds_version(config.mmds_version);
  if (config.vsock.enabled) {
    out->mutable_vsock()->set_enabled(true);
    out->mutable_vsock()->set_guest_cid(config.vsock.guest_cid);
  }
  const vm::ResourceLimits& l = config.limits;
  if (l.memory_mib != 0 || l.cpu_percent != 0 || l.cpu_weight != 0 || l.pids_max != 0) {
    ToProto(l, out->mutable_limits());
  }
  out->set_huge_pages(config.huge_pages == vm::HugePages::k2M ? v1::HUGE_PAGES_2M : v1::HUGE_PAGES_NONE);
}

void ToProto(const vm::VmInfo& info, v1::Vm* out) {
  out->Clear();
  out->set_id(info.id);
  out->set_name(info.name);
  ToProtoMap(info.labels, out->mutable_labels());
  out->set_state(ToProto(info.state));
  ToProto(info.config, out->mutable_config());
  out->set_snapshot_id(info.snapshot_id);
  out->set_memory_backend(ToProto(info.memory_backend));
  out->set_prefetch_policy(ToProto(info.prefetch_policy));
  if (!info.snapshot_id.empty() && info.memory_backend == vm::MemoryBackend::kUffd) {
    out->set_resolved_prefetch_policy(ToProto(info.resolved_policy));
  }
  out->set_pid(info.pid);
  out->set_console_log_path(info.console_log_path);
  out->set_vsock_uds_path(info.vsock_path);
  const vm::NetworkStatus& net = info.network;
  if (!net.netns.empty() || !net.tap.empty() || !net.guest_ip.empty() || !net.host_ip.empty() ||
      !net.guest_mac.empty() || !net.publish.empty()) {
    v1::NetworkStatus* n = out->mutable_network();
    n->set_netns(net.netns);
    n->set_tap(net.tap);
    n->set_guest_ip(net.guest_ip);
    n->set_host_ip(net.host_ip);
    n->set_guest_mac(net.guest_mac);
    ToProto(net.publish, n->mutable_publish());
  }
  if (info.created_at != absl::UnixEpoch()) ToProto(info.created_at, out->mutable_created_at());
  if (info.jailed) {
    v1::JailStatus* jail = out->mutable_jail();
    jail->set_uid(info.jail.uid);
    jail->set_gid(info.jail.gid);
    jail->set_chroot(info.jail.chroot);
    jail->set_cgroup_version(info.jail.cgroup_version);
    ToProto(info.jail.limits, jail->mutable_limits());
  }
  v1::VmTimings* t = out->mutable_timings();
  ToProto(info.timings.total, t->mutable_total());
  ToProto(info.timings.process_ready, t->mutable_process_ready());
  ToProto(info.timings.disks, t->mutable_disks());
  ToProto(info.timings.load, t->mutable_load());
  ToProto(info.timings.prefetch, t->mutable_prefetch());
  ToProto(info.timings.network, t->mutable_network());
  t->set_from_warm_pool(info.timings.from_warm_pool);
  out->set_error(info.error);
}

void ToProto(const vm::VmUsage& usage, v1::VmUsage* out) {
  out->Clear();
  ToProto(usage.sampled_at, out->mutable_sampled_at());
  ToProto(usage.cpu_time, out->mutable_cpu_time());
  out->set_rss_bytes(usage.rss_bytes);
  if (usage.pss_bytes.has_value()) out->set_pss_bytes(*usage.pss_bytes);
  out->set_page_faults_served(usage.page_faults_served);
  ToProto(usage.uptime, out->mutable_uptime());
}

absl::StatusOr<UsageWanted> FromProto(v1::UsageDetail detail, v1::UsageDetail unspecified_means) {
  if (detail == v1::USAGE_DETAIL_UNSPECIFIED) detail = unspecified_means;
  switch (detail) {
    case v1::USAGE_DETAIL_NONE:
      return UsageWanted::kNone;
    case v1::USAGE_DETAIL_BASIC:
      return UsageWanted::kBasic;
    case v1::USAGE_DETAIL_FULL:
      return UsageWanted::kWithPss;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("usage: unknown UsageDetail value ", static_cast<int>(detail)));
  }
}

void ToProto(const vm::SnapshotInfo& info, v1::Snapshot* out) {
  out->Clear();
  out->set_id(info.id);
  out->set_name(info.name);
  ToProtoMap(info.labels, out->mutable_labels());
  out->set_source_vm_id(info.source_vm_id);
  ToProto(info.config, out->mutable_config());
  out->set_firecracker_version(info.firecracker_version);
  out->set_memory_bytes(info.memory_bytes);
  out->set_memory_page_size(info.memory_page_size);
  out->set_parent_id(info.parent_id);
  out->set_memory_layers(info.memory_layers);
  out->set_memory_allocated_bytes(info.memory_allocated_bytes);
  out->set_vmstate_bytes(info.vmstate_bytes);
  out->set_zero_pages(info.zero_pages);
  out->set_working_set_pages(info.working_set_pages);
  out->set_vmstate_sha256(info.vmstate_sha256);
  out->set_memory_sha256(info.memory_sha256);
  if (info.created_at != absl::UnixEpoch()) ToProto(info.created_at, out->mutable_created_at());
  out->set_clone_count(info.clone_count);
  out->set_path(info.path);
  ToProto(info.create_duration, out->mutable_create_duration());
  if (info.host_recorded) {
    const firecracker::SnapshotHost& h = info.host;
    v1::SnapshotHost* host = out->mutable_host();
    host->set_firecracker_version(h.firecracker_version);
    host->set_snapshot_format_version(h.snapshot_format);
    host->set_cpu_vendor(h.cpu.vendor);
    host->set_cpu_family(static_cast<uint32_t>(h.cpu.family));
    host->set_cpu_model(static_cast<uint32_t>(h.cpu.model));
    host->set_cpu_stepping(static_cast<uint32_t>(h.cpu.stepping));
    host->set_cpu_model_name(h.cpu.model_name);
    for (const std::string& f : h.cpu.flags) host->add_cpu_flags(f);
    host->set_cpu_template(h.cpu_template);
    host->set_kernel_release(h.kernel_release);
    host->set_page_size(h.page_size);
  }
  out->set_jailed(info.jailed);
}

void ToProto(const vm::Event& event, v1::Event* out) {
  out->Clear();
  out->set_kind(ToProto(event.kind));
  if (event.time != absl::UnixEpoch()) ToProto(event.time, out->mutable_time());
  out->set_vm_id(event.vm_id);
  out->set_snapshot_id(event.snapshot_id);
  if (event.kind == vm::EventKind::kVmState) {
    out->set_state(ToProto(event.state));
    out->set_previous_state(ToProto(event.previous_state));
  }
  out->set_message(event.message);
  out->set_sequence(event.sequence);
}

void ToProto(const uffd::PageStats& stats, v1::FaultStats* out) {
  out->Clear();
  out->set_faults(stats.faults);
  out->set_pages_copied(stats.pages_copied);
  out->set_zero_pages(stats.zero_pages);
  out->set_prefetched_pages(stats.prefetched_pages);
  out->set_bytes_copied(stats.bytes_copied);
  out->set_eagain_retries(stats.eagain);
  out->set_eexist(stats.eexist);
  out->set_remove_events(stats.remove_events);
  out->set_latency_p50_us(stats.p50_us());
  out->set_latency_p99_us(stats.p99_us());
}

absl::StatusOr<vm::RunRequest> FromProto(const v1::RunVmRequest& request) {
  vm::RunRequest out;
  out.name = request.name();
  out.labels = ToMap(request.labels());
  if (!request.has_config()) return absl::InvalidArgumentError("config is required");
  absl::StatusOr<vm::VmConfig> config = FromProto(request.config());
  if (!config.ok()) return config.status();
  out.config = *std::move(config);
  out.metadata_json = request.metadata_json();
  return out;
}

absl::StatusOr<vm::ListFilter> FromProto(const v1::ListVmsRequest& request) {
  vm::ListFilter out;
  out.label_selector = ToMap(request.label_selector());
  for (int s : request.states()) {
    absl::StatusOr<vm::VmState> state = FromProto(static_cast<v1::VmState>(s));
    if (!state.ok()) return absl::InvalidArgumentError(absl::StrCat("states: ", state.status().message()));
    out.states.push_back(*state);
  }
  out.snapshot_ref = request.snapshot_ref();
  return out;
}

absl::StatusOr<absl::Duration> DeleteGrace(const v1::DeleteVmRequest& request) {
  if (!request.has_grace_period()) return absl::Seconds(5);
  absl::Duration grace = FromProto(request.grace_period());
  if (grace < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("grace_period must not be negative, got ", absl::FormatDuration(grace)));
  }
  return grace;
}

absl::StatusOr<vm::SnapshotRequest> FromProto(const v1::CreateSnapshotRequest& request) {
  vm::SnapshotRequest out;
  out.vm_ref = request.vm_ref();
  out.name = request.name();
  out.labels = ToMap(request.labels());
  absl::StatusOr<vm::AfterSnapshot> after = FromProto(request.after());
  if (!after.ok()) return absl::InvalidArgumentError(absl::StrCat("after: ", after.status().message()));
  out.after = *after;
  return out;
}

absl::StatusOr<vm::CloneRequest> FromProto(const v1::CloneSnapshotRequest& request) {
  if (request.count() < 1 || request.count() > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("count must be 1-1024, got ", request.count()));
  }
  vm::CloneRequest out;
  if (request.has_network()) {
    // Clones keep their snapshot's network choice and MAC (the guest was
    // snapshotted with them); what a request can add is published ports. The
    // manager checks `enabled` against the snapshot's.
    if (!request.network().guest_mac().empty()) {
      return absl::InvalidArgumentError(
          "network.guest_mac: clones keep their snapshot's MAC; leave it empty");
    }
    absl::StatusOr<std::vector<vm::PortMapping>> publish = FromProto(request.network().publish(), "network");
    if (!publish.ok()) return publish.status();
    out.publish = *std::move(publish);
    out.network_enabled = request.network().enabled();
  }
  out.snapshot_ref = request.snapshot_ref();
  out.count = request.count();
  absl::StatusOr<vm::MemoryBackend> backend = FromProto(request.memory_backend());
  if (!backend.ok())
    return absl::InvalidArgumentError(absl::StrCat("memory_backend: ", backend.status().message()));
  out.backend = *backend;
  absl::StatusOr<vm::ClonePolicy> policy = FromProto(request.prefetch_policy());
  if (!policy.ok())
    return absl::InvalidArgumentError(absl::StrCat("prefetch_policy: ", policy.status().message()));
  out.policy = *policy;
  out.name_prefix = request.name_prefix();
  out.labels = ToMap(request.labels());
  out.stay_paused = request.stay_paused();
  out.all_or_nothing = request.all_or_nothing();
  if (request.has_limits()) out.limits = FromProto(request.limits());
  out.parallelism = request.parallelism();
  out.metadata_json = request.metadata_json();
  return out;
}

absl::StatusOr<vm::ForkRequest> FromProto(const v1::ForkVmRequest& request) {
  if (request.vm_ref().empty()) return absl::InvalidArgumentError("vm_ref is required");
  if (request.count() < 1 || request.count() > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("count must be 1-1024, got ", request.count()));
  }
  vm::ForkRequest out;
  out.vm_ref = request.vm_ref();
  out.snapshot_name = request.snapshot_name();
  vm::CloneRequest& c = out.clone;
  c.count = request.count();
  absl::StatusOr<vm::MemoryBackend> backend = FromProto(request.memory_backend());
  if (!backend.ok())
    return absl::InvalidArgumentError(absl::StrCat("memory_backend: ", backend.status().message()));
  c.backend = *backend;
  absl::StatusOr<vm::ClonePolicy> policy = FromProto(request.prefetch_policy());
  if (!policy.ok())
    return absl::InvalidArgumentError(absl::StrCat("prefetch_policy: ", policy.status().message()));
  c.policy = *policy;
  c.name_prefix = request.name_prefix();
  c.labels = ToMap(request.labels());
  c.stay_paused = request.stay_paused();
  c.all_or_nothing = request.all_or_nothing();
  if (request.has_limits()) c.limits = FromProto(request.limits());
  c.parallelism = request.parallelism();
  c.metadata_json = request.metadata_json();
  return out;
}

void ToProto(const vm::ForkResult& result, v1::ForkVmResponse* out) {
  out->Clear();
  ToProto(result.snapshot, out->mutable_snapshot());
  out->set_kind(result.kind);
  ToProto(result.source_pause, out->mutable_source_pause());
  out->set_written_bytes(result.written_bytes);
  for (const vm::VmInfo& fork : result.forks.clones) ToProto(fork, out->add_forks());
  ToProto(result.total, out->mutable_total());
  out->set_succeeded(result.forks.succeeded);
  out->set_failed(result.forks.failed);
}

void ToProto(const vm::DeleteResult& result, v1::DeleteVmResponse* out) {
  out->Clear();
  out->set_id(result.id);
  out->set_stop_mode(result.forced ? "forced" : "graceful");
}

void ToProto(const vm::DeleteSnapshotResult& result, v1::DeleteSnapshotResponse* out) {
  out->Clear();
  out->set_id(result.id);
  for (const std::string& id : result.stopped_vm_ids) out->add_stopped_vm_ids(id);
}

void ToProto(const vm::CloneResult& result, v1::CloneSnapshotResponse* out) {
  out->Clear();
  for (const vm::VmInfo& clone : result.clones) ToProto(clone, out->add_clones());
  ToProto(result.total, out->mutable_total());
  out->set_succeeded(result.succeeded);
  out->set_failed(result.failed);
}

void ToProto(const uffd::ServerStats& stats, const PageServerContext& context, v1::PageServerStats* out) {
  out->Clear();
  out->set_loop_threads(context.loop_threads);
  for (const uffd::ListenerStats& listener : stats.listeners) {
    if (!context.vm_id.empty() && listener.tag != context.vm_id) continue;
    auto clone = context.clones.find(listener.tag);
    for (const uffd::SessionStats& session : listener.sessions) {
      v1::CloneSessionStats* s = out->add_sessions();
      s->set_vm_id(listener.tag);
      s->set_peer_pid(session.peer_pid);
      if (clone != context.clones.end()) {
        s->set_snapshot_id(clone->second.snapshot_id);
        s->set_policy(ToProto(clone->second.policy));
      } else {
        auto file = context.memory_files.find(listener.mem_file);
        if (file != context.memory_files.end()) s->set_snapshot_id(file->second.snapshot_id);
      }
      ToProto(session.stats, s->mutable_stats());
    }
  }
  for (const uffd::SnapshotStats& snapshot : stats.snapshots) {
    v1::SnapshotMappingStats* s = out->add_snapshots();
    auto file = context.memory_files.find(snapshot.mem_file);
    if (file != context.memory_files.end()) {
      s->set_snapshot_id(file->second.snapshot_id);
      s->set_memory_bytes(file->second.memory_bytes);
    }
    s->set_sessions(snapshot.listeners);
    ToProto(snapshot.stats, s->mutable_stats());
  }
  ToProto(stats.total, out->mutable_total());
  out->set_dropped_sessions(context.dropped_sessions);
}

}  // namespace fcvm::daemon
