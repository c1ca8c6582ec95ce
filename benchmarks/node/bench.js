'use strict';
// node-ipc 9.2.1 roles of the benchmark: `node bench.js ROLE CONFIG_JSON`.
//
// node-ipc is loaded from ../.node (installed there by the runner with
// `npm install --ignore-scripts node-ipc@9.2.1`). Like the Python roles, each role reports with
// `BENCH {json}` lines on stdout and exits by itself at its deadline.

const fs = require('fs');
const net = require('net');
const path = require('path');
const { fork } = require('child_process');

const ipc = require(path.join(__dirname, '..', '.node', 'node_modules', 'node-ipc'));

const role = process.argv[2];
const cfg = JSON.parse(process.argv[3]);

setTimeout(() => {
    console.error(`node ${role}: deadline of ${cfg.deadline} s reached`);
    process.exit(3);
}, (cfg.deadline + 5) * 1000).unref();

ipc.config.silent = true;
ipc.config.maxConnections = cfg.max_connections || 100;

const SMALL_EVENT = { s: 'x'.repeat(64) };
const NESTED_EVENT = [{ id: 1, v: 0.5, tags: ['a', 'b'] }, { id: 2, v: 1.5, tags: [] }];
const HIGH_WATER = 1 << 20;
const MAX_EVENTS = 100000000; // a count bound behind every time bound

// Resolves once the line is handed to the pipe: a large report must not be cut by exit().
function say(kind, fields) {
    const line = 'BENCH ' + JSON.stringify(Object.assign({ kind }, fields || {})) + '\n';
    return new Promise((resolve) => process.stdout.write(line, resolve));
}

async function finish(kind, fields) {
    await say(kind, fields);
    process.exit(0);
}

function now() {
    return Number(process.hrtime.bigint()) / 1e9;
}

function tick() {
    return new Promise((resolve) => setImmediate(resolve));
}

function drained(socket) {
    return new Promise((resolve) => socket.once('drain', resolve));
}

function freePort() {
    return new Promise((resolve, reject) => {
        const probe = net.createServer();
        probe.on('error', reject);
        probe.listen(0, '127.0.0.1', () => {
            const port = probe.address().port;
            probe.close(() => resolve(port));
        });
    });
}

// Serve as "world" on a Unix socket or TCP; resolves with what the runner needs to connect.
async function listen() {
    ipc.config.id = 'world';
    if (cfg.transport === 'tcp') {
        const port = await freePort(); // node-ipc 9.2.1 treats port 0 as "use 8000"
        await new Promise((resolve) => {
            ipc.serveNet('127.0.0.1', port, resolve);
            ipc.server.start();
        });
        return { port };
    }
    const socketPath = `${cfg.dir}/node.world`;
    await new Promise((resolve) => {
        ipc.serve(socketPath, resolve);
        ipc.server.start();
    });
    return { path: socketPath };
}

// Connect to "world" (through `instance`, by default the module's own); resolves with the
// connection once its socket is connected.
function connect(id, instance) {
    const client = instance || ipc;
    client.config.id = id || 'hello';
    return new Promise((resolve) => {
        const ready = () => {
            const conn = client.of.world;
            let first = true;
            conn.on('connect', () => {
                if (first) {
                    first = false;
                    resolve(conn);
                }
            });
        };
        if (cfg.transport === 'tcp') {
            client.connectToNet('world', '127.0.0.1', cfg.port, ready);
        } else {
            client.connectTo('world', cfg.path, ready);
        }
    });
}

// --- servers ----------------------------------------------------------------------------------

async function server() {
    ipc.config.id = 'world';
    const info = await listen();
    ipc.server.on('ping', (data, socket) => ipc.server.emit(socket, 'pong', data));
    ipc.server.on('ev', (data, socket) => {
        socket.benchCount = (socket.benchCount || 0) + 1;
    });
    ipc.server.on('fin', (data, socket) => {
        ipc.server.emit(socket, 'done', socket.benchCount || 0);
        socket.benchCount = 0;
    });
    say('ready', info);
}

async function serverW4() {
    const info = await listen();
    let dones = [];
    let allDone = null;
    ipc.server.on('done', (count) => {
        dones.push(count);
        if (dones.length === cfg.clients) allDone();
    });
    say('ready', info);
    for (let waited = 0; ipc.server.sockets.length < cfg.clients; waited++) {
        if (waited > cfg.deadline * 100) throw new Error('the clients did not all connect');
        await new Promise((resolve) => setTimeout(resolve, 5));
    }
    const sockets = ipc.server.sockets.slice();
    const rounds = [];
    for (let index = 0; index <= cfg.rounds; index++) {
        const seconds = index === 0 ? cfg.warmup : cfg.seconds;
        dones = [];
        const finished = new Promise((resolve) => {
            allDone = resolve;
        });
        let sent = 0;
        const start = now();
        const end = start + seconds;
        while (sent < MAX_EVENTS) {
            for (let k = 0; k < 100; k++) ipc.server.broadcast('ev', SMALL_EVENT);
            sent += 100;
            if (now() >= end) break;
            for (const socket of sockets) {
                if (socket.writableLength > HIGH_WATER) await drained(socket);
            }
        }
        ipc.server.broadcast('fin', {});
        await finished;
        const elapsed = now() - start;
        const total = dones.reduce((a, b) => a + b, 0);
        if (index > 0) rounds.push({ count: total, sent: sent * cfg.clients, seconds: elapsed });
    }
    await say('result', { rounds });
    ipc.server.broadcast('bye', {});
    setTimeout(() => process.exit(0), 200);
}

async function serverSlow() {
    const info = await listen();
    // node-ipc's emit has no backpressure: all a user can do is emit.
    ipc.server.on('connect', (socket) => {
        setTimeout(async () => {
            const chunk = 'x'.repeat(cfg.chunk_bytes);
            let attempted = 0;
            const end = now() + cfg.seconds;
            while (attempted < cfg.cap_bytes && now() < end) {
                for (let k = 0; k < 16; k++) ipc.server.emit(socket, 'ev', chunk);
                attempted += 16 * cfg.chunk_bytes;
                await tick();
            }
            say('done', { attempted });
        }, cfg.settle * 1000);
    });
    say('ready', info);
}

// --- clients ----------------------------------------------------------------------------------

async function clientW1() {
    const conn = await connect();
    let pending = null;
    conn.on('pong', () => {
        const resolve = pending;
        pending = null;
        resolve();
    });
    const ping = (i) =>
        new Promise((resolve) => {
            pending = resolve;
            conn.emit('ping', i);
        });
    for (let i = 0; i < cfg.warmup_iterations; i++) await ping(i);
    const rounds = [];
    for (let r = 0; r < cfg.rounds; r++) {
        const samples = [];
        const end = now() + cfg.seconds;
        for (let i = 0; i < cfg.max_iterations; i++) {
            const start = now();
            await ping(i);
            const stop = now();
            samples.push(Math.round((stop - start) * 1e8) / 100);
            if (stop >= end) break;
        }
        rounds.push({ samples_us: samples });
    }
    await finish('result', { rounds });
}

// W2/W3, and the fan-in curve: `connections` clients in this process (ids hello<index>
// onwards, each on its own node-ipc instance), which wait for the runner's start file first.
async function clientStream() {
    const count = cfg.connections || 1;
    const conns = [];
    for (let k = 0; k < count; k++) {
        const instance = k === 0 ? ipc : new ipc.IPC();
        instance.config.silent = true;
        const id = cfg.start_file ? `hello${cfg.index + k}` : 'hello';
        conns.push(await connect(id, instance));
    }
    await waitForStart();
    const perConnection = await Promise.all(conns.map((conn) => streamRounds(conn, count > 1)));
    const rounds = perConnection[0].map((_, r) => ({
        count: perConnection.reduce((sum, rs) => sum + rs[r].count, 0),
        seconds: Math.max(...perConnection.map((rs) => rs[r].seconds)),
    }));
    await finish('result', { rounds });
}

// The fan-in curve: say ready, then wait (bounded) until the runner creates the start file.
async function waitForStart() {
    if (!cfg.start_file) return;
    await say('ready');
    const deadline = now() + cfg.deadline;
    while (!fs.existsSync(cfg.start_file)) {
        if (now() > deadline) throw new Error('the runner never started the fan-in clients');
        await new Promise((resolve) => setTimeout(resolve, 5));
    }
}

// One connection's rounds; `share` yields to the loop after each batch, so that the
// process's other connections emit too.
async function streamRounds(conn, share) {
    // JSON cannot carry bytes: W3 sends a 1 MiB string (a Buffer would become a JSON array).
    const data = cfg.payload_bytes ? 'x'.repeat(cfg.payload_bytes) : cfg.nested ? NESTED_EVENT : SMALL_EVENT;
    const check = cfg.payload_bytes ? 1 : 100;
    const limit = cfg.max_events || MAX_EVENTS; // fan-in: a share of one budget
    let done = null;
    conn.on('done', (count) => done(count));
    const rounds = [];
    for (let index = 0; index <= cfg.rounds; index++) {
        const seconds = index === 0 ? cfg.warmup : cfg.seconds;
        const finished = new Promise((resolve) => {
            done = resolve;
        });
        let sent = 0;
        const start = now();
        const end = start + seconds;
        while (sent < limit) {
            for (let k = 0; k < check; k++) conn.emit('ev', data);
            sent += check;
            if (now() >= end) break;
            if (conn.socket.writableLength > HIGH_WATER) await drained(conn.socket);
            else if (share) await tick();
        }
        conn.emit('fin', {});
        const count = await finished;
        const elapsed = now() - start;
        if (count !== sent) throw new Error(`server counted ${count} events, ${sent} were sent`);
        if (index > 0) rounds.push({ count: sent, seconds: elapsed });
    }
    return rounds;
}

// The broadcast receivers of one process: `connections` of them, each on its own node-ipc
// instance (an instance holds one connection per server id), ids c<index> onwards.
async function clientW4() {
    const count = cfg.connections || 1;
    for (let k = 0; k < count; k++) {
        const instance = k === 0 ? ipc : new ipc.IPC();
        instance.config.silent = true;
        const conn = await connect(`c${cfg.index + k}`, instance);
        let received = 0;
        conn.on('ev', () => {
            received++;
        });
        conn.on('fin', () => {
            conn.emit('done', received);
            received = 0;
        });
        conn.on('bye', () => process.exit(0));
    }
    say('ready');
}

function connectAndPing() {
    return new Promise((resolve) => {
        const ready = () => {
            const conn = ipc.of.world;
            conn.on('connect', () => conn.emit('ping', 1));
            conn.on('pong', resolve);
        };
        if (cfg.transport === 'tcp') {
            ipc.connectToNet('world', '127.0.0.1', cfg.port, ready);
        } else {
            ipc.connectTo('world', cfg.path, ready);
        }
    });
}

async function clientW5() {
    ipc.config.id = 'hello';
    const rounds = [];
    for (let index = 0; index <= cfg.rounds; index++) {
        const iterations = index === 0 ? cfg.warmup_iterations : cfg.max_iterations;
        const samples = [];
        const end = now() + cfg.seconds;
        for (let i = 0; i < iterations; i++) {
            const start = now();
            await connectAndPing();
            const stop = now();
            ipc.disconnect('world');
            samples.push(Math.round((stop - start) * 1e8) / 100);
            if (stop >= end) break;
        }
        if (index > 0) rounds.push({ samples_us: samples });
    }
    await finish('result', { rounds });
}

// --- W6: spawn-to-ready of a child process that connects back with node-ipc -------------------

async function spawnParent() {
    ipc.config.id = 'parent';
    const socketPath = `${cfg.dir}/node.parent`;
    await new Promise((resolve) => {
        ipc.serve(socketPath, resolve);
        ipc.server.start();
    });
    let ready = null;
    ipc.server.on('ready', () => ready());
    const samples = [];
    for (let index = 0; index <= cfg.rounds; index++) {
        const isReady = new Promise((resolve) => {
            ready = resolve;
        });
        const start = now();
        const child = fork(path.join(__dirname, 'w6_child.js'), [socketPath], {
            stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
        });
        const exited = new Promise((resolve) => child.once('exit', resolve));
        await isReady;
        const stop = now();
        child.kill('SIGKILL');
        await exited;
        if (index > 0) samples.push((stop - start) * 1e3);
    }
    await finish('result', { rounds: samples.map((s) => ({ samples_ms: [s] })) });
}

const ROLES = {
    server: server,
    'server-w4': serverW4,
    'server-slow': serverSlow,
    'client-w1': clientW1,
    'client-stream': clientStream,
    'client-w4': clientW4,
    'client-w5': clientW5,
    spawn: spawnParent,
};

ROLES[role]().catch((err) => {
    console.error(err);
    process.exit(1);
});
