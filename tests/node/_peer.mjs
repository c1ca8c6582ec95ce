// Shared by server.mjs and client.mjs: loads one node-ipc version, prints what happens as JSON
// lines on stdout, and takes commands as JSON lines on stdin. Written for ipcactors' interop
// tests (tests/test_nodeipc.py); nothing here is node-ipc's own code.
import { createHash } from 'node:crypto';
import { createInterface } from 'node:readline';

const MODULES = { '9': 'node-ipc', '10': '@achrinza/node-ipc', '14': 'node-ipc-14' };

export async function loadIPC(version, delimiter) {
    const name = MODULES[version];
    if (!name) throw new Error(`unknown node-ipc version ${version}`);
    const module = await import(name);
    const ipc = module.default;
    ipc.config.silent = true;
    ipc.config.retry = 100;
    if (delimiter) ipc.config.delimiter = delimiter;
    // TLS for serveNet/connectToNet: {"public": cert file, "private": key file,
    // "trustedConnections": CA file}, node-ipc's own option names.
    if (process.env.NODE_IPC_TLS) ipc.config.tls = JSON.parse(process.env.NODE_IPC_TLS);
    return ipc;
}

// Large payloads are summarised (length in UTF-16 units for a string, SHA-256 of its JSON in
// UTF-8): stdout carries what the test checks, not megabytes.
export function summary(data) {
    const text = JSON.stringify(data);
    if (text !== undefined && text.length > 4096) {
        return { summary: true, length: typeof data === 'string' ? data.length : text.length,
                 sha256: createHash('sha256').update(text).digest('hex') };
    }
    return data;
}

export function say(record) {
    process.stdout.write(JSON.stringify(record) + '\n');
}

export function commands(handle) {
    const lines = createInterface({ input: process.stdin });
    lines.on('line', (line) => {
        if (line.trim()) handle(JSON.parse(line));
    });
    lines.on('close', () => process.exit(0));
}
