// A stand-in for a guest's network service in the network integration tests:
// listens on <ip>:<port> (TCP) and answers every connection with one line,
// "<id> <peer address>", then closes it. Runs until killed.
//
// Usage: fcvm_net_responder <ip> <port> <id>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s <ip> <port> <id>\n", argv[0]);
    return 2;
  }
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    perror("socket");
    return 1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(atoi(argv[2])));
  if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
    fprintf(stderr, "bad address %s\n", argv[1]);
    return 2;
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) {
    perror("bind");
    return 1;
  }
  if (listen(fd, 64) < 0) {
    perror("listen");
    return 1;
  }
  while (true) {
    sockaddr_in peer{};
    socklen_t len = sizeof(peer);
    int c = accept4(fd, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
    if (c < 0) continue;
    char ip[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof(ip));
    std::string line = std::string(argv[3]) + " " + ip + "\n";
    ssize_t n = write(c, line.data(), line.size());
    (void)n;
    close(c);
  }
}
