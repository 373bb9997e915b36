#!/usr/bin/env node
// Runs one of the user guide's JavaScript client examples, unchanged, against a live server.
//
//   node run-guide-example.js EXAMPLE HOST:PORT [EVENT_TYPE,...]
//
// EXAMPLE is one of the keys of EXAMPLES below; HOST:PORT is the server under test. The guide's code
// (guide/*.js, copied verbatim from seed/realtime-implementation-guide.md) runs as if in a dashboard
// page served by that server at `/`: it gets the browser globals it uses (WebSocket from `ws`,
// EventSource from `eventsource`, window.location), relative URLs resolve against the page, and the
// guide's default address `localhost:8000` means the server under test. The handler functions the
// guide calls but leaves to the reader record their calls.
//
// Every line on stdout is one JSON object:
//   {"kind": "ready", "transport", "url", "message"}   subscription_confirmed (WebSocket) or the named
//                                                      connection_established event (SSE): publish now
//   {"kind": "received", "transport", "message"}       each message the guide's onmessage is handed
//   {"kind": "call", "handler", "args"}                 a call of a handler the guide leaves undefined
//   {"kind": "error", "transport", "message"}           a transport error (the stream may reconnect)
// The guide's own console output goes to stderr. The process runs until it is terminated.

'use strict';

const fs = require('fs');
const path = require('path');
const vm = require('vm');
const { Console } = require('console');
const { WebSocket } = require('ws');
const { EventSource } = require('eventsource');

const GUIDE_ADDRESS = 'localhost:8000';   // where the guide's examples expect the server
const LIFETIME_MS = 120000;               // a safety net should the test runner die without ending us

const EXAMPLES = {
  // "Subscription Example": a WebSocket subscribing to three types of project my-project.
  'subscription-example': {
    file: 'subscription-example.js',
    functions: ['handleFileChange', 'handleAutoCommit', 'updateProgress'],
  },
  // SSE "Usage Example": an EventSource on file_change,auto_commit of project my-project.
  'sse-usage-example': {
    file: 'sse-usage-example.js',
    functions: ['handleFileChange', 'handleAutoCommit'],
  },
  // "Enhanced Dashboard Integration": RealTimeDashboard over WebSocket.
  'dashboard-websocket': {
    file: 'realtime-dashboard.js',
    start: (dashboard) => dashboard.connectWebSocket(),
  },
  // RealTimeDashboard over SSE, as its fallback: the types given (maybe none) are subscribed to first.
  'dashboard-sse': {
    file: 'realtime-dashboard.js',
    start: (dashboard, eventTypes) => {
      if (eventTypes.length > 0) dashboard.subscribeToEvents(eventTypes);
      dashboard.connectSSE();
    },
  },
};
const DASHBOARD_METHODS = ['updateFileChangeCounter', 'showCommitNotification', 'updateProgressBar',
                           'showRiskAlert'];

function emit(record) {
  process.stdout.write(JSON.stringify(record) + '\n');
}

function recorder(name) {
  return (...args) => emit({ kind: 'call', handler: name, args });
}

function main(argv) {
  const [name, address, eventTypes = ''] = argv;
  const example = EXAMPLES[name];
  if (!example || !address) {
    process.stderr.write(`usage: run-guide-example.js {${Object.keys(EXAMPLES).join('|')}} HOST:PORT `
                         + '[EVENT_TYPE,...]\n');
    process.exit(2);
  }
  const page = new URL(`http://${address}/`);

  class PageWebSocket extends WebSocket {
    constructor(url, ...rest) {
      const target = new URL(url);
      if (target.host === GUIDE_ADDRESS) target.host = address;
      super(target.href, ...rest);
      this.addEventListener('message', (event) => {
        const message = JSON.parse(event.data);
        emit({ kind: 'received', transport: 'websocket', message });
        if (message.type === 'subscription_confirmed') {
          emit({ kind: 'ready', transport: 'websocket', url: target.href, message });
        }
      });
      this.addEventListener('error', (event) => {
        emit({ kind: 'error', transport: 'websocket', message: String(event.message) });
      });
    }
  }

  class PageEventSource extends EventSource {
    constructor(url, ...rest) {
      const target = new URL(url, page);
      super(target, ...rest);
      this.addEventListener('message', (event) => {
        emit({ kind: 'received', transport: 'sse', message: JSON.parse(event.data) });
      });
      this.addEventListener('connection_established', (event) => {
        emit({ kind: 'ready', transport: 'sse', url: target.href, message: JSON.parse(event.data) });
      });
      this.addEventListener('error', (event) => {
        emit({ kind: 'error', transport: 'sse', message: String(event.message) });
      });
    }
  }

  const globals = {
    WebSocket: PageWebSocket,
    EventSource: PageEventSource,
    window: { location: page },
    console: new Console({ stdout: process.stderr, stderr: process.stderr }),
    setTimeout,
    clearTimeout,
  };
  for (const fn of example.functions || []) globals[fn] = recorder(fn);
  const context = vm.createContext(globals);
  const file = path.join(__dirname, 'guide', example.file);
  vm.runInContext(fs.readFileSync(file, 'utf8'), context, { filename: file });

  if (example.start) {
    const Dashboard = vm.runInContext('RealTimeDashboard', context);
    for (const method of DASHBOARD_METHODS) Dashboard.prototype[method] = recorder(method);
    example.start(new Dashboard(), eventTypes.split(',').filter(Boolean));
  }
  setTimeout(() => process.exit(3), LIFETIME_MS).unref();
}

main(process.argv.slice(2));
