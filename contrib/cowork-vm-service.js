#!/usr/bin/env node
// Shim for clients that start the daemon as a JavaScript file (the 2.x
// client forks `cowork-vm-service.js` with Electron-as-Node; some launchers
// look for that name on the command line). It runs the Rust binary in its
// place, passing this script's path first (the binary ignores a leading
// `*.js` argument) so the command line keeps the `cowork-vm-service.js`
// substring, forwards termination signals, and exits with the binary's
// status.
//
// The binary is $COWORK_VM_SERVICE_BIN, else `cowork-vm-service` next to
// this file, else `cowork-vm-service` on PATH.
'use strict';
const { spawn } = require('child_process');
const fs = require('fs');
const path = require('path');

const local = path.join(__dirname, 'cowork-vm-service');
const bin = process.env.COWORK_VM_SERVICE_BIN
  || (fs.existsSync(local) ? local : 'cowork-vm-service');
const env = { ...process.env };
delete env.ELECTRON_RUN_AS_NODE;

const child = spawn(bin, [__filename, ...process.argv.slice(2)], {
  stdio: ['ignore', 'inherit', 'inherit'],
  env,
});
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.on(sig, () => child.kill(sig));
}
// A forked shim has an IPC channel; its closing means the app is gone.
if (process.connected) {
  process.on('disconnect', () => child.kill('SIGTERM'));
}
child.on('error', (e) => {
  console.error(`[cowork-vm-service] cannot start ${bin}: ${e.message}`);
  process.exit(1);
});
child.on('exit', (code, signal) => {
  process.exit(code === null ? 128 + (require('os').constants.signals[signal] || 0) : code);
});
