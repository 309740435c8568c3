// The simulated board: the accelerator core's RTL (Verilator), its byte streams on a pty.
//
// Usage: board_tb
// Prints "PTY <path>" on stdout once the pseudo-terminal is ready; a host opens <path> as a
// serial port. Runs until stdin closes (the launching process exited) or SIGTERM.
// Only the UART PHY is replaced: bytes from the pty enter the core's rx stream one per
// clock, and tx bytes go back to the pty.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <memory>
#include <poll.h>
#include <termios.h>
#include <unistd.h>
#include <vector>

#include "Vaccelerator_core.h"
#include "verilated.h"

#define SIG(stream, member) stream##___05F##member

static volatile sig_atomic_t stop = 0;
static void on_signal(int) { stop = 1; }

int main(int argc, char **argv) {
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) || unlockpt(master)) { perror("pty"); return 2; }
    const char *path = ptsname(master);
    // Hold the slave open (raw) so the pty survives hosts that open and close it.
    int slave = open(path, O_RDWR | O_NOCTTY);
    if (slave < 0) { perror(path); return 2; }
    struct termios tio;
    tcgetattr(slave, &tio);
    cfmakeraw(&tio);
    tcsetattr(slave, TCSANOW, &tio);
    fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
    printf("PTY %s\n", path);
    fflush(stdout);

    auto ctx = std::make_unique<VerilatedContext>();
    auto top = std::make_unique<Vaccelerator_core>(ctx.get());
    top->clk = 0;
    top->rst = 1;
#ifdef DRAM_CLOCK_DIV
    // the memory controller's own clock, DRAM_CLOCK_DIV cycles of clk to one of its (the
    // board's dram_clock_hz), its rising edges on clk's
    top->dram_clk = 0;
    top->dram_rst = 1;
    for (int i = 0; i < 4 * DRAM_CLOCK_DIV; i++) {
        top->clk ^= 1;
        if (top->clk) top->dram_clk = (i / 2) % DRAM_CLOCK_DIV < (DRAM_CLOCK_DIV + 1) / 2;
        top->eval();
    }
    top->dram_rst = 0;
#else
    for (int i = 0; i < 4; i++) { top->clk ^= 1; top->eval(); }
#endif
    top->rst = 0;

    std::vector<unsigned char> in(1 << 16);
    size_t in_len = 0, in_pos = 0;
    std::vector<unsigned char> out;
    out.reserve(1 << 16);
    unsigned long long quiet = 0, cycle = 0;
    while (!stop) {
        // With nothing buffered, look at the pty every 64 cycles, not every cycle: a system
        // call a cycle would cap the simulation near 100k cycles a second.
        if (in_pos == in_len && (cycle & 63) == 0) {
            in_pos = in_len = 0;
            ssize_t n = read(master, in.data(), in.size());
            if (n > 0) in_len = size_t(n);
        }
        bool have = in_pos < in_len;
        top->SIG(rx, valid) = have;
        if (have) top->SIG(rx, payload) = in[in_pos];
        top->SIG(tx, ready) = 1;
        top->eval();
        bool took = have && top->SIG(rx, ready);
        bool sent = top->SIG(tx, valid);
        if (sent) out.push_back(top->SIG(tx, payload));
        top->clk = 1;
#ifdef DRAM_CLOCK_DIV
        top->dram_clk = cycle % DRAM_CLOCK_DIV < (DRAM_CLOCK_DIV + 1) / 2;
#endif
        top->eval();
        top->clk = 0;
        top->eval();
        cycle++;
        if (took) in_pos++;
        bool active = took || sent || top->active;
        quiet = active ? 0 : quiet + 1;
        if (!out.empty() && (out.size() >= 4096 || quiet > 64 || (cycle & 1023) == 0)) {
            ssize_t n = write(master, out.data(), out.size());
            if (n > 0) out.erase(out.begin(), out.begin() + n);
        }
        if (quiet > 20000 && out.empty() && in_pos == in_len) {
            // Nothing to do: sleep until the host writes (or the launcher goes away).
            struct pollfd fds[2] = {{master, POLLIN, 0}, {0, POLLIN, 0}};
            int r = poll(fds, 2, 200);
            if (r > 0 && (fds[1].revents & (POLLIN | POLLHUP))) {
                char c;
                if (read(0, &c, 1) <= 0) break;  // stdin closed: the launcher exited
            }
            if (r > 0 && (fds[0].revents & POLLIN)) quiet = 0;
        }
    }
    top->final();
    close(slave);
    close(master);
    return 0;
}
