// Snapshot compatibility: what a snapshot records about the host that made
// it, and the check that refuses, up front, a restore on a host where it
// cannot run (see lib/firecracker/snapshot_compat.h for the rules).

#include <string>

#include "absl/strings/str_cat.h"
#include "lib/base/status.h"
#include "lib/vm/core.h"

namespace fcvm::vm {

absl::StatusOr<firecracker::SnapshotHost> Core::ThisHost() {
  absl::MutexLock lock(&host_mu);
  if (!host.has_value()) {
    ASSIGN_OR_RETURN(firecracker::SnapshotHost h, env.host->Describe());
    if (env.vmms != nullptr) {
      h.firecracker_version = env.vmms->version();
      h.snapshot_format = env.vmms->snapshot_format();
    }
    host = std::move(h);
  }
  return *host;
}

absl::Status Core::CheckRestorable(const storage::SnapshotRecord& record, const std::string& dir) {
  firecracker::SnapshotHost made;
  if (!record.host_json.empty()) {
    absl::StatusOr<firecracker::SnapshotHost> parsed = firecracker::SnapshotHostFromJson(record.host_json);
    if (!parsed.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("snapshot ", record.name,
                       ": its record of the host that made it is unreadable: ", parsed.status().message()));
    }
    made = *std::move(parsed);
  } else {
    made.firecracker_version = record.firecracker_version;  // all an older record has
  }
  // The vmstate's own header says which format it is in, whatever the
  // record says.
  absl::StatusOr<firecracker::Version> in_file =
      firecracker::ReadVmstateFormat(storage::SnapshotStore::VmstatePath(dir));
  if (in_file.ok() && made.snapshot_format.empty()) made.snapshot_format = in_file->ToString();
  absl::StatusOr<firecracker::SnapshotHost> here = ThisHost();
  if (!here.ok()) return absl::OkStatus();  // cannot tell: Firecracker will
  absl::Status st = firecracker::CheckSnapshotHost(made, *here);
  if (st.ok() && in_file.ok() && in_file->ToString() != made.snapshot_format) {
    firecracker::SnapshotHost file_only;
    file_only.snapshot_format = in_file->ToString();
    file_only.cpu_template = here->cpu_template;
    st = firecracker::CheckSnapshotHost(file_only, *here);
  }
  if (st.ok()) return st;
  return absl::FailedPreconditionError(
      absl::StrCat("snapshot ", record.name, " cannot be restored on this host: ", st.message()));
}

}  // namespace fcvm::vm
