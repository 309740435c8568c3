// Compiled stream harness for the Fire engine (Verilator).
//
// Usage: engine_tb STIMULUS RESULTS [gap_percent backpressure_percent seed max_cycles]
//
// STIMULUS holds one queue of beats per input stream (cfg, weights, qparams, input, bypass):
// for each stream a header {uint32 beats, uint32 words_per_beat} followed by the beats as
// little-endian uint32 words. Every queue is offered to the engine at once; the engine takes
// what each run needs in order (its configuration says how many beats of each). RESULTS gets
// {uint32 cycles_total, uint32 runs, uint32 timeout, then per run: uint32 error, uint32
// cycles, uint32 compute, uint32 outputs} and then every output value as int32.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "Vfire_engine.h"
#include "verilated.h"

// Verilator spells the "__" of Amaranth port names as "___05F".
#define SIG(stream, member) stream##___05F##member

struct Queue {
    uint32_t beats = 0, words = 0;
    std::vector<uint32_t> data;
    size_t next = 0;
    bool empty() const { return next >= beats; }
    const uint32_t *beat() const { return &data[next * words]; }
};

template <typename T> static void put(T &sig, const uint32_t *w, uint32_t words) {
    uint64_t v = w[0];
    if (words > 1 && sizeof(T) > 4) v |= uint64_t(w[1]) << 32;
    sig = (T)v;
}
template <std::size_t N> static void put(VlWide<N> &sig, const uint32_t *w, uint32_t words) {
    for (std::size_t i = 0; i < N; i++) sig[i] = i < words ? w[i] : 0;
}

static uint64_t rng_state = 88172645463325252ull;
static uint32_t rnd() {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)rng_state;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s STIMULUS RESULTS [gap%% backpressure%% seed max_cycles]\n",
                argv[0]);
        return 2;
    }
    uint32_t gap = argc > 3 ? atoi(argv[3]) : 0, back = argc > 4 ? atoi(argv[4]) : 0;
    if (argc > 5) rng_state ^= strtoull(argv[5], nullptr, 10) * 0x9E3779B97F4A7C15ull;
    uint64_t max_cycles = argc > 6 ? strtoull(argv[6], nullptr, 10) : 2000000000ull;

    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 2; }
    Queue q[5];
    for (auto &s : q) {
        if (fread(&s.beats, 4, 1, f) != 1 || fread(&s.words, 4, 1, f) != 1) return 3;
        s.data.resize(size_t(s.beats) * s.words);
        if (!s.data.empty() && fread(s.data.data(), 4, s.data.size(), f) != s.data.size())
            return 3;
    }
    fclose(f);

    auto ctx = std::make_unique<VerilatedContext>();
    auto top = std::make_unique<Vfire_engine>(ctx.get());
    top->clk = 0;
    top->rst = 1;
    for (int i = 0; i < 4; i++) { top->clk ^= 1; top->eval(); }
    top->rst = 0;

    std::vector<int32_t> outputs;
    std::vector<uint32_t> runs;  // error, cycles, compute, outputs per run
    uint32_t last_runs = top->runs, out_at_run = 0;
    uint64_t cycle = 0, idle = 0;
    bool timeout = false;
    bool offer[5] = {};
    while (true) {
        // drive inputs (before the rising edge)
        for (int i = 0; i < 5; i++) offer[i] = !q[i].empty() && (gap == 0 || rnd() % 100 >= gap);
        top->SIG(cfg, valid) = offer[0];
        if (offer[0]) put(top->SIG(cfg, payload), q[0].beat(), q[0].words);
        top->SIG(weights, valid) = offer[1];
        if (offer[1]) put(top->SIG(weights, payload), q[1].beat(), q[1].words);
        top->SIG(qparams, valid) = offer[2];
        if (offer[2]) put(top->SIG(qparams, payload), q[2].beat(), q[2].words);
        top->SIG(input, valid) = offer[3];
        if (offer[3]) put(top->SIG(input, payload), q[3].beat(), q[3].words);
#ifdef HAS_BYPASS
        top->SIG(bypass, valid) = offer[4];
        if (offer[4]) put(top->SIG(bypass, payload), q[4].beat(), q[4].words);
#endif
        top->SIG(output, ready) = back == 0 || rnd() % 100 >= back;
        top->eval();
        // sample handshakes
        bool took[5] = {offer[0] && top->SIG(cfg, ready), offer[1] && top->SIG(weights, ready),
                        offer[2] && top->SIG(qparams, ready), offer[3] && top->SIG(input, ready), false};
#ifdef HAS_BYPASS
        took[4] = offer[4] && top->SIG(bypass, ready);
#endif
        bool out = top->SIG(output, valid) && top->SIG(output, ready);
        int32_t value = 0;
        if (out) {
            // sign-extend from the output width
            int64_t raw = top->SIG(output, payload);
            int width = OUTPUT_BITS;
            value = (int32_t)((raw << (64 - width)) >> (64 - width));
        }
        top->clk = 1;
        top->eval();
        top->clk = 0;
        top->eval();
        cycle++;
        for (int i = 0; i < 5; i++) if (took[i]) q[i].next++;
        if (out) outputs.push_back(value);
        if (top->runs != last_runs) {
            last_runs = top->runs;
            runs.push_back(top->error);
            runs.push_back(top->cycles);
            runs.push_back(top->compute);
            runs.push_back(uint32_t(outputs.size() - out_at_run));
            out_at_run = outputs.size();
        }
        bool pending = false;
        for (auto &s : q) pending |= !s.empty();
        idle = (!pending && !top->busy) ? idle + 1 : 0;
        if (idle > 64) break;
        if (cycle >= max_cycles) {
            timeout = true;
            fprintf(stderr, "timeout after %llu cycles; beats left:", (unsigned long long)cycle);
            for (auto &s : q) fprintf(stderr, " %u", unsigned(s.beats - s.next));
            fprintf(stderr, "; busy=%d\n", int(top->busy));
            break;
        }
    }
    FILE *o = fopen(argv[2], "wb");
    if (!o) { perror(argv[2]); return 2; }
    uint32_t header[3] = {uint32_t(cycle), uint32_t(runs.size() / 4), timeout};
    fwrite(header, 4, 3, o);
    fwrite(runs.data(), 4, runs.size(), o);
    fwrite(outputs.data(), 4, outputs.size(), o);
    fclose(o);
    top->final();
    return timeout ? 1 : 0;
}
