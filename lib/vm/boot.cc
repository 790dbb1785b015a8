// Run: a VM booted from a kernel, its drives and an optional network.

#include <optional>

#include "absl/strings/str_cat.h"
#include "lib/base/logging.h"
#include "lib/base/status.h"
#include "lib/firecracker/vmm.h"
#include "lib/vm/core.h"
#include "lib/vm/provision.h"
#include "lib/vm/validate.h"
#include "spdlog/spdlog.h"

namespace fcvm::vm {

absl::StatusOr<VmInfo> RunVm(Core& core, const RunRequest& request, const CancelToken& cancel) {
  const VmConfig& config = request.config;
  RETURN_IF_ERROR(core.RequireVmms());
  RETURN_IF_ERROR(ValidateConfig(config));
  // Checked here, by the path the client gave: a jailed Firecracker would
  // name its own copy in the chroot.
  RETURN_IF_ERROR(firecracker::CheckKernelImage(config.kernel_path));
  RETURN_IF_ERROR(ValidateLabels("vm labels", request.labels));
  RETURN_IF_ERROR(ValidateMetadata(request.metadata_json));
  if (config.network.enabled) RETURN_IF_ERROR(core.env.network->Available());
  RETURN_IF_ERROR(CheckGuestMemory(core, config, 1));
  DriveSource image = [](const DriveConfig& d) { return d.path; };
  RETURN_IF_ERROR(CheckDiskForCopies(core, config, image, 1, "the VM's private disk copies"));
  RETURN_IF_ERROR(CheckLimitsEnforceable(core, config.limits));
  ASSIGN_OR_RETURN(firecracker::CgroupLimits limits, CgroupLimitsFor(config, config.limits));

  // An unnamed VM is named after its id, which it gets in Creation::Begin.
  std::optional<Registry::Reservation> names;
  if (!request.name.empty()) {
    ASSIGN_OR_RETURN(names, core.registry.ReserveName(request.name));
  }
  VmInfo info;
  info.name = request.name;
  info.labels = request.labels;
  info.config = config;
  // A VM with a network needs a process started inside its namespace: never
  // a pooled one. Nor does a jailed one: its kernel may be on another file
  // system, which only a launch can bind-mount into its jail.
  bool may_use_pool = !config.network.enabled && !core.jailed();
  ASSIGN_OR_RETURN(
      std::unique_ptr<Creation> vm,
      Creation::Begin(core, std::move(info), names.has_value() ? &*names : nullptr, may_use_pool));
  auto fail = [&vm](absl::Status st) {
    vm->Fail(st);
    return st;
  };

  if (config.network.enabled) {
    if (absl::Status st = vm->SetupNetwork(config.network.publish); !st.ok()) return fail(st);
  }
  VmFiles files;
  files.shared.push_back({.host_path = config.kernel_path, .jail_path = "/vmlinux"});
  if (!config.initrd_path.empty())
    files.shared.push_back({.host_path = config.initrd_path, .jail_path = "/initrd"});
  if (absl::Status st = vm->AttachProcessAndDrives(config, image, files, limits, cancel); !st.ok())
    return fail(st);
  if (absl::Status st = cancel.Check(); !st.ok()) return fail(st);

  firecracker::BootSpec spec;
  spec.boot_source.kernel_image_path = vm->VmmPath("/vmlinux", config.kernel_path);
  spec.boot_source.boot_args = config.boot_args;
  if (!config.initrd_path.empty()) spec.boot_source.initrd_path = vm->VmmPath("/initrd", config.initrd_path);
  spec.machine.vcpu_count = static_cast<int>(config.vcpu_count);
  spec.machine.mem_size_mib = config.memory_mib;
  if (config.huge_pages == HugePages::k2M) spec.machine.huge_pages = "2M";
  // Its dirty pages logged from the start, so that it can be forked live
  // (not a huge-page guest: KVM would log its writes in 4 KiB pages).
  if (config.huge_pages != HugePages::k2M) spec.machine.track_dirty_pages = true;
  spec.drives = core.FirecrackerDrives(config);
  if (config.network.enabled) {
    firecracker::NetworkInterface nic;
    nic.iface_id = "eth0";
    nic.host_dev_name = core.registry.Info(vm->entry()).network.tap;
    if (!config.network.guest_mac.empty()) nic.guest_mac = config.network.guest_mac;
    spec.network_interfaces.push_back(nic);
    // The guest reaches MMDS (169.254.169.254) through its interface.
    firecracker::MmdsConfig mmds;
    mmds.version = config.mmds_version.empty() ? "V2" : config.mmds_version;
    mmds.network_interfaces = {nic.iface_id};
    spec.mmds_config = mmds;
  }
  if (config.vsock.enabled) {
    spec.vsock = firecracker::VsockDevice{
        config.vsock.guest_cid != 0 ? config.vsock.guest_cid : kDefaultGuestCid, kVsockSocketName};
    // Relative: Firecracker binds it in its working directory, the VM's
    // directory, or its chroot's root when jailed.
    const std::string path = VsockHostPath(*vm);
    core.registry.Update(vm->entry(), [&](VmInfo& v) { v.vsock_path = path; });
  }
  // The VM's metadata is in place before its first instruction.
  absl::StatusOr<std::string> metadata =
      ComposeMetadata(core.registry.Info(vm->entry()), request.metadata_json, std::nullopt);
  if (!metadata.ok()) return fail(metadata.status());
  spec.mmds_data = *std::move(metadata);
  absl::Time t = absl::Now();
  if (absl::Status st = vm->vmm().Boot(spec); !st.ok()) return fail(st);
  vm->SetTimings([&](VmTimings& timings) { timings.load = absl::Now() - t; });
  // A caller that gave up by now gets no VM: nobody would know it exists.
  if (absl::Status st = cancel.Check(); !st.ok()) return fail(st);

  absl::StatusOr<VmInfo> running = vm->Commit(VmState::kRunning, "booted");
  if (!running.ok()) return fail(running.status());
  spdlog::info("vm {} ({}) booted in {}", running->id, running->name,
               absl::FormatDuration(running->timings.total));
  return running;
}

}  // namespace fcvm::vm
