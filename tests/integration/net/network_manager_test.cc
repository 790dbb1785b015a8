// NetworkManager against the real kernel: namespaces, veths, taps, routes and
// nftables. Needs root; skips (with the reason) where namespaces or nftables
// are unavailable.
//
// Linux guests cannot boot on the test machine, so each VM's guest is a
// stand-in that keeps the datapath Firecracker would use: a "guest" network
// namespace holds a tap "eth0" configured as the guest would be (172.16.0.2/30,
// default route via 172.16.0.1), and a wire thread copies frames between that
// tap and the VM namespace's tap0, which it opens exactly as Firecracker does
// (TUNSETIFF IFF_TAP|IFF_NO_PI|IFF_VNET_HDR on the existing tap). A responder
// process in the guest namespace, bound to the guest address, answers every
// TCP connection with its VM id and the peer address it sees.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lib/base/file_util.h"
#include "lib/base/process.h"
#include "lib/base/status.h"
#include "lib/net/netlink.h"
#include "lib/net/netns.h"
#include "lib/net/network_manager.h"
#include "lib/net/nft.h"
#include "tests/testing/status_matchers.h"

namespace fcvm::net {
namespace {

using ::fcvm::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr uint16_t kGuestPort = 7000;
constexpr char kGuestNsPrefix[] = "fcvmtg-";  // not "<prefix>-": reconcile must not see them

// ---- small socket helpers -------------------------------------------------

absl::StatusOr<UniqueFd> TcpConnect(Ipv4 ip, uint16_t port, absl::Duration timeout) {
  const std::string what = absl::StrCat("connect ", ip.ToString(), ":", port);
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return ErrnoError("socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(ip.value);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0 && errno != EINPROGRESS) {
    return ErrnoError(what);
  }
  pollfd p{fd.get(), POLLOUT, 0};
  int n = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  if (n < 0) return ErrnoError("poll");
  if (n == 0) return absl::DeadlineExceededError(absl::StrCat(what, ": timed out"));
  int err = 0;
  socklen_t len = sizeof(err);
  getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) return ErrnoError(err, what);
  return fd;
}

// Connects, reads until EOF, returns what the peer sent.
absl::StatusOr<std::string> TcpRequest(Ipv4 ip, uint16_t port, absl::Duration timeout = absl::Seconds(2)) {
  absl::Time deadline = absl::Now() + timeout;
  ASSIGN_OR_RETURN(UniqueFd fd, TcpConnect(ip, port, timeout));
  std::string out;
  char buf[256];
  while (true) {
    pollfd p{fd.get(), POLLIN, 0};
    int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (ms <= 0 || poll(&p, 1, ms) == 0) return absl::DeadlineExceededError("read timed out");
    ssize_t n = read(fd.get(), buf, sizeof(buf));
    if (n < 0) return ErrnoError("read");
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

absl::StatusOr<std::string> TcpRequestFrom(int netns_fd, Ipv4 ip, uint16_t port,
                                           absl::Duration timeout = absl::Seconds(2)) {
  absl::StatusOr<std::string> result = absl::UnknownError("not run");
  RETURN_IF_ERROR(RunInNetns(netns_fd, [&] {
    result = TcpRequest(ip, port, timeout);
    return absl::OkStatus();
  }));
  return result;
}

absl::StatusOr<std::string> RequestWithRetry(Ipv4 ip, uint16_t port, absl::Duration total) {
  absl::Time deadline = absl::Now() + total;
  absl::StatusOr<std::string> r;
  while (true) {
    r = TcpRequest(ip, port, absl::Milliseconds(500));
    if (r.ok() || absl::Now() > deadline) return r;
    absl::SleepFor(absl::Milliseconds(50));
  }
}

// ---- the guest stand-in ---------------------------------------------------

// Copies frames between the VM namespace's tap (opened like Firecracker opens
// it) and the guest namespace's tap, until destroyed.
class Wire {
 public:
  static absl::StatusOr<std::unique_ptr<Wire>> Create(const VmNetwork& net, int guest_netns) {
    UniqueFd vm_side, guest_side;
    RETURN_IF_ERROR(RunInNetns(net.netns.get(), [&]() -> absl::Status {
      ASSIGN_OR_RETURN(vm_side, OpenTap(net.tap_name));
      return absl::OkStatus();
    }));
    RETURN_IF_ERROR(RunInNetns(guest_netns, [&]() -> absl::Status {
      ASSIGN_OR_RETURN(guest_side, OpenTap("eth0"));
      ASSIGN_OR_RETURN(Netlink nl, Netlink::Open());
      RETURN_IF_ERROR(nl.SetLinkUp("lo"));
      RETURN_IF_ERROR(nl.AddAddress("eth0", net.guest_ip, net.guest_prefix_len));
      RETURN_IF_ERROR(nl.SetLinkUp("eth0"));
      return nl.AddDefaultRoute(net.gateway_ip, "eth0");
    }));
    UniqueFd stop(eventfd(0, EFD_CLOEXEC));
    if (!stop) return ErrnoError("eventfd");
    for (int fd : {vm_side.get(), guest_side.get()}) {
      fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    }
    return std::unique_ptr<Wire>(new Wire(std::move(vm_side), std::move(guest_side), std::move(stop)));
  }

  ~Wire() {
    uint64_t one = 1;
    ssize_t n = write(stop_.get(), &one, sizeof(one));
    (void)n;
    thread_.join();
  }

 private:
  Wire(UniqueFd a, UniqueFd b, UniqueFd stop)
      : a_(std::move(a)), b_(std::move(b)), stop_(std::move(stop)), thread_([this] { Run(); }) {}

  void Run() {
    std::vector<char> buf(70000);
    const int fds[2] = {a_.get(), b_.get()};
    while (true) {
      pollfd p[3] = {{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}, {stop_.get(), POLLIN, 0}};
      if (poll(p, 3, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (p[2].revents) return;
      for (int i = 0; i < 2; ++i) {
        if (!(p[i].revents & POLLIN)) continue;
        // Both taps carry the same virtio-net header, so frames pass as they are.
        ssize_t n = read(fds[i], buf.data(), buf.size());
        if (n > 0) {
          ssize_t w = write(fds[1 - i], buf.data(), static_cast<size_t>(n));
          (void)w;
        }
      }
    }
  }

  UniqueFd a_, b_, stop_;
  std::thread thread_;
};

absl::StatusOr<std::string> Capture(const std::vector<std::string>& argv) {
  return RunAndCapture(argv, absl::Seconds(10));
}

// Runs argv inside `netns_fd` through Process::Spawn (as fcvmd will spawn
// Firecracker with VmNetwork.netns) and returns its stdout.
absl::StatusOr<std::string> CaptureInNetns(int netns_fd, const std::vector<std::string>& argv) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return ErrnoError("pipe2");
  UniqueFd r(p[0]), w(p[1]);
  SpawnOptions opts;
  opts.argv = argv;
  opts.fds = {{w.get(), 1}};
  opts.netns_fd = netns_fd;
  ASSIGN_OR_RETURN(Process proc, Process::Spawn(opts));
  w.Reset();
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(r.get(), buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  ASSIGN_OR_RETURN(ExitStatus st, proc.Wait(absl::Seconds(10)));
  if (!st.success()) return absl::InternalError(absl::StrCat(argv[0], ": ", st.ToString()));
  return out;
}

// Puts net.ipv4.ip_forward back the way the test found it.
class ForwardingRestorer {
 public:
  ForwardingRestorer() {
    absl::StatusOr<std::string> v = ReadSysctl("net/ipv4/ip_forward");
    if (v.ok()) old_ = *v;
  }
  ~ForwardingRestorer() {
    if (!old_.empty()) (void)WriteSysctl("net/ipv4/ip_forward", old_);
  }

 private:
  std::string old_;
};

// ---- fixture --------------------------------------------------------------

class NetIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces, nftables)";
    absl::StatusOr<ScopedNetns> probe = ScopedNetns::Create(absl::StrCat("fcvmtprobe", getpid()));
    if (!probe.ok()) GTEST_SKIP() << "network namespaces unavailable: " << probe.status();
    absl::Status nft = RunInNetns(
        probe->fd(), [] { return RunNft("add table ip probe\nlist tables\n", "probe nftables").status(); });
    if (!nft.ok()) GTEST_SKIP() << "nftables unavailable: " << nft;
    char tmpl[] = "/tmp/fcvm-net-it-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    state_dir_ = tmpl;
    // Leftovers of an earlier, crashed run of this very test.
    absl::StatusOr<std::vector<std::string>> names = ListNamedNetns();
    ASSERT_OK(names);
    for (const std::string& n : *names) {
      if (absl::StartsWith(n, kGuestNsPrefix)) {
        ASSERT_OK(DeleteNamedNetns(n));
      }
    }
  }

  void TearDown() override {
    if (manager_) {
      // Whatever the test left (also after a failed assertion): all of it.
      EXPECT_OK(manager_->ReconcileOrphans({}));
      EXPECT_OK(manager_->RemoveHostRules());
      manager_.reset();
    }
    if (!state_dir_.empty()) {
      EXPECT_OK(RemoveTree(state_dir_));
    }
  }

  // Each test has its own prefix and pool, so ctest -j cannot mix them up.
  void MakeManager(const std::string& prefix, const std::string& pool, bool forwarding) {
    NetworkOptions o;
    o.state_dir = state_dir_;
    o.pool_cidr = pool;
    o.name_prefix = prefix;
    o.enable_host_forwarding = forwarding;
    absl::StatusOr<std::unique_ptr<NetworkManager>> m = NetworkManager::Create(o);
    ASSERT_OK(m);
    manager_ = std::move(*m);
    ASSERT_OK(manager_->ReconcileOrphans({}));
  }

  // What is left of `prefix` on the host, as `ip` and `nft` see it.
  void ExpectNothingLeft(const std::string& prefix, bool host_table_too) {
    ASSERT_OK_AND_ASSIGN(std::string netns, Capture({"/usr/sbin/ip", "netns", "list"}));
    EXPECT_THAT(netns, Not(HasSubstr(prefix + "-")));
    ASSERT_OK_AND_ASSIGN(std::string links, Capture({"/usr/sbin/ip", "-o", "link", "show"}));
    EXPECT_THAT(links, Not(HasSubstr(prefix + "-h")));
    ASSERT_OK_AND_ASSIGN(std::string tables, Capture({"/usr/sbin/nft", "list", "tables"}));
    EXPECT_THAT(tables, Not(HasSubstr(prefix + "-")));
    if (host_table_too) {
      EXPECT_THAT(tables, Not(HasSubstr("ip " + prefix + "\n")));
    }
    EXPECT_TRUE(manager_->pool().All().empty());
  }

  std::string state_dir_;
  std::unique_ptr<NetworkManager> manager_;
};

struct TestVm {
  std::string id;
  VmNetwork net;
  ScopedNetns guest;
  std::unique_ptr<Wire> wire;
  Process responder;  // destroyed (killed) first
};

TEST_F(NetIntegrationTest, SixteenClonesWithTheSameGuestAddress) {
  ForwardingRestorer restore_forwarding;
  const std::string prefix = "fcvmta";
  ASSERT_NO_FATAL_FAILURE(MakeManager(prefix, "10.231.0.0/24", /*forwarding=*/true));
  constexpr int kVms = 16;
  constexpr uint16_t kHostPortBase = 41000;
  std::vector<TestVm> vms(kVms);
  for (int i = 0; i < kVms; ++i) {
    TestVm& vm = vms[i];
    vm.id = absl::StrCat("vm", i);
    ASSERT_OK_AND_ASSIGN(
        vm.net,
        manager_->Setup(vm.id, {{Protocol::kTcp, static_cast<uint16_t>(kHostPortBase + i), kGuestPort}}));
    EXPECT_EQ(vm.net.guest_ip.ToString(), "172.16.0.2");
    EXPECT_EQ(vm.net.tap_name, "tap0");
    EXPECT_EQ(vm.net.netns_name, absl::StrCat(prefix, "-", vm.id));
    EXPECT_EQ(vm.net.vm_ip.ToString(), absl::StrCat("10.231.0.", 4 * i + 2));
    EXPECT_EQ(vm.net.host_ip.ToString(), absl::StrCat("10.231.0.", 4 * i + 1));
    ASSERT_OK_AND_ASSIGN(vm.guest, ScopedNetns::Create(absl::StrCat(kGuestNsPrefix, i)));
    ASSERT_OK_AND_ASSIGN(vm.wire, Wire::Create(vm.net, vm.guest.fd()));
    SpawnOptions opts;
    opts.argv = {FCVM_NET_RESPONDER_PATH, vm.net.guest_ip.ToString(), std::to_string(kGuestPort), vm.id};
    opts.netns_fd = vm.guest.fd();
    opts.fds = {{2, 2}};
    ASSERT_OK_AND_ASSIGN(vm.responder, Process::Spawn(opts));
  }

  // The tap is what Firecracker expects, and the namespace fd works for
  // Process::Spawn: `ip` run through it sees the VM's namespace.
  ASSERT_OK_AND_ASSIGN(std::string tap,
                       Capture({"/usr/sbin/ip", "-d", "-n", vms[0].net.netns_name, "link", "show", "tap0"}));
  EXPECT_THAT(tap, HasSubstr("tun type tap pi off vnet_hdr on persist on"));
  ASSERT_OK_AND_ASSIGN(std::string addrs,
                       CaptureInNetns(vms[3].net.netns.get(), {"/usr/sbin/ip", "-o", "-4", "addr"}));
  EXPECT_THAT(addrs, HasSubstr("tap0    inet 172.16.0.1/30"));
  EXPECT_THAT(addrs, HasSubstr("veth0    inet 10.231.0.14/30"));

  // Every VM through its unique address: its own answer, and the guest sees
  // the host's address (no NAT on the way in other than the DNAT).
  for (const TestVm& vm : vms) {
    ASSERT_OK_AND_ASSIGN(std::string reply, RequestWithRetry(vm.net.vm_ip, kGuestPort, absl::Seconds(10)));
    EXPECT_EQ(reply, absl::StrCat(vm.id, " ", vm.net.host_ip.ToString())) << vm.id;
  }
  // Every VM through its published port on a host address (here the host end
  // of vm0's veth; any local address other than loopback works).
  for (int i = 0; i < kVms; ++i) {
    ASSERT_OK_AND_ASSIGN(std::string reply,
                         TcpRequest(vms[0].net.host_ip, static_cast<uint16_t>(kHostPortBase + i)));
    EXPECT_THAT(reply, StartsWith(vms[i].id + " ")) << "published port " << kHostPortBase + i;
  }

  // Egress: each guest's fixed address leaves as its VM's unique address.
  UniqueFd listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  ASSERT_TRUE(listener.valid());
  sockaddr_in any{};
  any.sin_family = AF_INET;
  ASSERT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&any), sizeof(any)), 0);
  ASSERT_EQ(listen(listener.get(), 16), 0);
  socklen_t alen = sizeof(any);
  ASSERT_EQ(getsockname(listener.get(), reinterpret_cast<sockaddr*>(&any), &alen), 0);
  const uint16_t host_port = ntohs(any.sin_port);
  for (const TestVm& vm : vms) {
    UniqueFd client;
    ASSERT_OK(RunInNetns(vm.guest.fd(), [&]() -> absl::Status {
      ASSIGN_OR_RETURN(client, TcpConnect(vm.net.host_ip, host_port, absl::Seconds(2)));
      return absl::OkStatus();
    }));
    pollfd p{listener.get(), POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, 2000), 1) << vm.id;
    sockaddr_in peer{};
    socklen_t plen = sizeof(peer);
    UniqueFd conn(accept4(listener.get(), reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_CLOEXEC));
    ASSERT_TRUE(conn.valid());
    EXPECT_EQ(Ipv4{ntohl(peer.sin_addr.s_addr)}.ToString(), vm.net.vm_ip.ToString()) << vm.id;
  }

  // Isolation: vm0's guest and namespace cannot reach vm1's unique address...
  EXPECT_FALSE(TcpRequestFrom(vms[0].guest.fd(), vms[1].net.vm_ip, kGuestPort, absl::Milliseconds(800)).ok());
  EXPECT_FALSE(
      TcpRequestFrom(vms[0].net.netns.get(), vms[5].net.vm_ip, kGuestPort, absl::Milliseconds(800)).ok());
  // ...while the host does forward between VMs (so the drop above is the
  // isolation rule, not a missing route): a published port of vm1, reached
  // from vm0's guest, answers, and vm1 sees vm0's unique address.
  ASSERT_OK_AND_ASSIGN(std::string via_published,
                       TcpRequestFrom(vms[0].guest.fd(), vms[1].net.host_ip, kHostPortBase + 1));
  EXPECT_EQ(via_published, absl::StrCat("vm1 ", vms[0].net.vm_ip.ToString()));

  // Teardown leaves nothing behind.
  for (TestVm& vm : vms) {
    vm.responder = Process();
    vm.wire.reset();
    vm.guest = ScopedNetns();
    std::string id = vm.id;
    vm.net = VmNetwork();
    ASSERT_OK(manager_->Teardown(id));
    ASSERT_OK(manager_->Teardown(id));  // idempotent
  }
  ExpectNothingLeft(prefix, /*host_table_too=*/false);
  ASSERT_OK(manager_->RemoveHostRules());
  ExpectNothingLeft(prefix, /*host_table_too=*/true);
  EXPECT_OK(ReadSysctl("net/ipv4/ip_forward"));
}

TEST_F(NetIntegrationTest, SetupErrorsUndoEverything) {
  const std::string prefix = "fcvmtb";
  ASSERT_NO_FATAL_FAILURE(MakeManager(prefix, "10.231.1.0/28", /*forwarding=*/false));
  ASSERT_OK_AND_ASSIGN(VmNetwork a, manager_->Setup("a", {{Protocol::kTcp, 42000, 80}}));
  // The same VM twice: refused, the first one untouched.
  EXPECT_THAT(manager_->Setup("a"), StatusIs(absl::StatusCode::kAlreadyExists));
  ASSERT_OK_AND_ASSIGN(VmNetwork reopened, manager_->Open("a"));
  EXPECT_EQ(reopened.vm_ip.ToString(), a.vm_ip.ToString());
  EXPECT_TRUE(reopened.netns.valid());
  // A host port another VM publishes: refused, nothing left of "b".
  EXPECT_THAT(manager_->Setup("b", {{Protocol::kTcp, 42000, 81}}),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("published by vm a")));
  EXPECT_THAT(OpenNamedNetns(prefix + "-b"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(manager_->Setup("../x"), StatusIs(absl::StatusCode::kInvalidArgument));
  // Exhaustion: a /28 holds four /30s.
  ASSERT_OK(manager_->Setup("b"));
  ASSERT_OK(manager_->Setup("c"));
  ASSERT_OK(manager_->Setup("d"));
  EXPECT_THAT(manager_->Setup("e"), StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("exhausted")));
  EXPECT_THAT(OpenNamedNetns(prefix + "-e"), StatusIs(absl::StatusCode::kNotFound));
  // A step failing half-way (the host veth name is taken) undoes the rest.
  ASSERT_OK(manager_->Teardown("d"));
  ASSERT_OK_AND_ASSIGN(Netlink nl, Netlink::Open());
  ScopedNetns blocker_ns;
  ASSERT_OK_AND_ASSIGN(blocker_ns, ScopedNetns::Create("fcvmtblocker"));
  ASSERT_OK(nl.CreateVeth(prefix + "-h3", "blk0", blocker_ns.fd()));
  EXPECT_THAT(manager_->Setup("d"),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("veth pair veth0 <-> fcvmtb-h3")));
  EXPECT_THAT(OpenNamedNetns(prefix + "-d"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(manager_->pool().Lookup("d"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(nl.DeleteLink(prefix + "-h3"));
  for (const char* id : {"a", "b", "c"}) ASSERT_OK(manager_->Teardown(id));
  ASSERT_OK(manager_->Teardown("never-set-up"));
  ExpectNothingLeft(prefix, /*host_table_too=*/false);
}

TEST_F(NetIntegrationTest, ReconcileRemovesOrphansOnly) {
  const std::string prefix = "fcvmtc";
  ASSERT_NO_FATAL_FAILURE(MakeManager(prefix, "10.231.2.0/24", /*forwarding=*/false));
  ASSERT_OK(manager_->Setup("keep", {{Protocol::kTcp, 42100, 80}}));
  ASSERT_OK(manager_->Setup("orphan", {{Protocol::kTcp, 42101, 80}}));
  // A host veth whose pool entry is gone (a crash between steps).
  ASSERT_OK_AND_ASSIGN(Netlink nl, Netlink::Open());
  ASSERT_OK_AND_ASSIGN(ScopedNetns other, ScopedNetns::Create("fcvmtother"));
  ASSERT_OK(nl.CreateVeth(prefix + "-h40", "x0", other.fd()));
  ASSERT_OK(nl.SetLinkAlias(prefix + "-h40", "ghost"));

  ASSERT_OK_AND_ASSIGN(std::vector<std::string> removed, manager_->ReconcileOrphans({"keep"}));
  EXPECT_THAT(removed, ::testing::UnorderedElementsAre("orphan", "ghost"));
  EXPECT_THAT(OpenNamedNetns(prefix + "-orphan"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(nl.LinkIndex(prefix + "-h40"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(nl.LinkIndex(prefix + "-h1"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_OK(nl.LinkIndex(prefix + "-h0"));
  ASSERT_OK_AND_ASSIGN(std::string tables, Capture({"/usr/sbin/nft", "list", "tables"}));
  EXPECT_THAT(tables, HasSubstr(prefix + "-keep"));
  EXPECT_THAT(tables, Not(HasSubstr(prefix + "-orphan")));
  ASSERT_OK(manager_->Open("keep"));

  // A fresh manager over the same state dir (fcvmd restarted) finds "keep".
  NetworkOptions o = manager_->options();
  // One manager per state dir: a second one is refused while the first lives.
  EXPECT_THAT(NetworkManager::Create(o),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("in use")));
  manager_.reset();
  ASSERT_OK_AND_ASSIGN(manager_, NetworkManager::Create(o));
  ASSERT_OK_AND_ASSIGN(VmNetwork keep, manager_->Open("keep"));
  EXPECT_EQ(keep.vm_ip.ToString(), "10.231.2.2");
  ASSERT_OK_AND_ASSIGN(removed, manager_->ReconcileOrphans({}));
  EXPECT_THAT(removed, ::testing::ElementsAre("keep"));
  ExpectNothingLeft(prefix, /*host_table_too=*/false);
}

TEST_F(NetIntegrationTest, ConcurrentSetupAndTeardownOfDifferentVms) {
  const std::string prefix = "fcvmtd";
  ASSERT_NO_FATAL_FAILURE(MakeManager(prefix, "10.231.3.0/24", /*forwarding=*/false));
  constexpr int kThreads = 4, kPerThread = 4;
  std::vector<VmNetwork> nets(kThreads * kPerThread);
  std::vector<absl::Status> errors(kThreads);
  auto run = [&](bool up) {
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = t * kPerThread; i < (t + 1) * kPerThread; ++i) {
          const std::string id = absl::StrCat("c", i);
          absl::Status st;
          if (up) {
            absl::StatusOr<VmNetwork> n = manager_->Setup(id);
            if (n.ok()) nets[i] = std::move(*n);
            st = n.status();
          } else {
            st = manager_->Teardown(id);
          }
          if (!st.ok() && errors[t].ok()) errors[t] = st;
        }
      });
    }
    for (std::thread& th : threads) th.join();
  };
  run(/*up=*/true);
  for (const absl::Status& st : errors) ASSERT_OK(st);
  std::set<std::string> addresses;
  for (const VmNetwork& n : nets) {
    addresses.insert(n.vm_ip.ToString());
    EXPECT_OK(OpenNamedNetns(n.netns_name));
  }
  EXPECT_EQ(addresses.size(), nets.size());
  EXPECT_EQ(manager_->pool().All().size(), nets.size());
  nets.clear();
  run(/*up=*/false);
  for (const absl::Status& st : errors) ASSERT_OK(st);
  ExpectNothingLeft(prefix, /*host_table_too=*/false);
}

TEST_F(NetIntegrationTest, UplinkGetsMasquerade) {
  const std::string prefix = "fcvmte";
  NetworkOptions o;
  o.state_dir = state_dir_;
  o.pool_cidr = "10.231.4.0/24";
  o.name_prefix = prefix;
  o.enable_host_forwarding = false;
  o.uplink = "fcvmtnone0";  // need not exist: the rule matches by name
  ASSERT_OK_AND_ASSIGN(manager_, NetworkManager::Create(o));
  ASSERT_OK_AND_ASSIGN(std::string table, Capture({"/usr/sbin/nft", "list", "table", "ip", prefix}));
  EXPECT_THAT(table, HasSubstr("ip saddr 10.231.4.0/24 oifname \"fcvmtnone0\" masquerade"));
  EXPECT_THAT(table, HasSubstr("iifname \"fcvmte-h*\" oifname \"fcvmte-h*\" drop"));
  // Bad options are refused before anything is made.
  NetworkOptions bad = o;
  bad.name_prefix = "averylongprefix";
  EXPECT_THAT(NetworkManager::Create(bad), StatusIs(absl::StatusCode::kInvalidArgument));
  bad = o;
  bad.pool_cidr = "172.16.0.0/16";
  EXPECT_THAT(NetworkManager::Create(bad),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overlaps")));
}

TEST_F(NetIntegrationTest, ScopedNetnsAndFailedInitReleaseTheirNamespace) {
  const std::string path = NetnsPath("fcvmtscoped");
  {
    ASSERT_OK_AND_ASSIGN(ScopedNetns ns, ScopedNetns::Create("fcvmtscoped"));
    EXPECT_EQ(access(path.c_str(), F_OK), 0);
    EXPECT_THAT(ScopedNetns::Create("fcvmtscoped"), StatusIs(absl::StatusCode::kAlreadyExists));
    ScopedNetns moved = std::move(ns);
    EXPECT_EQ(access(path.c_str(), F_OK), 0);  // the moved-from owner deletes nothing
    ASSERT_OK_AND_ASSIGN(std::string listed, Capture({"/usr/sbin/ip", "netns", "list"}));
    EXPECT_THAT(listed, HasSubstr("fcvmtscoped"));
  }
  EXPECT_NE(access(path.c_str(), F_OK), 0);
  // An init that fails leaves no namespace behind and returns its error.
  EXPECT_THAT(CreateNamedNetns("fcvmtscoped", [] { return absl::DataLossError("boom"); }),
              StatusIs(absl::StatusCode::kDataLoss, "boom"));
  EXPECT_NE(access(path.c_str(), F_OK), 0);
  EXPECT_THAT(CreateNamedNetns("a/b", [] { return absl::OkStatus(); }),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fcvm::net
