// autopm-realtime live dashboard. Vanilla JS, no build step; page.py inlines this file into the page.
// Every URL is relative to the page, so it works at / and under Jupyter's {base_url}autopm/.
(function () {
  'use strict';

  var EVENT_TYPES = ['file_change', 'auto_commit', 'progress_update', 'risk_alert'];
  var SEVERITY_RANK = { critical: 0, high: 1, medium: 2, low: 3 };
  var MAX_FILES = 20, MAX_COMMITS = 20, MAX_POINTS = 200, MAX_TOASTS = 4, TOAST_MS = 6000;
  var BACKOFF_MIN = 500, BACKOFF_MAX = 30000, SEEN_MAX = 5000;
  // An embedding page may tune these before this script runs (the browser tests shorten the probe):
  // window.AUTOPM_DASHBOARD = { wsProbeMs: 60000 }
  var OPTIONS = window.AUTOPM_DASHBOARD || {};
  var WS_PROBE_MS = Number(OPTIONS.wsProbeMs) || 60000;   // on SSE: how often to see if WebSocket is back
  var WS_PROBE_TIMEOUT_MS = 10000;   // a probe not greeted by then is given up
  var FETCH_TIMEOUT_MS = 10000;      // an API request not answered by then counts as failed
  var TOKEN_EXPIRED_CLOSE = 4001;

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);   // never innerHTML
    return node;
  }

  var pageParams = new URLSearchParams(location.search);
  var token = pageParams.get('token');

  function apiUrl(path, params) {
    var url = new URL(path, location.href);
    Object.keys(params || {}).forEach(function (k) {
      if (params[k] !== null && params[k] !== undefined && params[k] !== '') url.searchParams.set(k, params[k]);
    });
    if (token) url.searchParams.set('token', token);
    return url;
  }

  function fetchJson(path, params) {
    var abort = new AbortController();
    var timer = setTimeout(function () { abort.abort(); }, FETCH_TIMEOUT_MS);
    return fetch(apiUrl(path, params), { credentials: 'same-origin', headers: { Accept: 'application/json' },
                                         signal: abort.signal })
      .finally(function () { clearTimeout(timer); })
      .then(function (r) {
        if (r.ok) return r.json();
        return r.json().catch(function () { return {}; }).then(function (body) {
          var error = new Error(path + ': HTTP ' + r.status);
          error.status = r.status;
          error.reason = body && body.error && body.error.reason;
          throw error;
        });
      });
  }

  function relTime(iso) {
    var t = Date.parse(iso);
    if (isNaN(t)) return '';
    var s = Math.max(0, Math.round((Date.now() - t) / 1000));
    if (s < 5) return 'just now';
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }
  function timeNode(iso) {
    var node = el('time', null, relTime(iso));
    if (iso) { node.dateTime = iso; node.title = iso; }
    return node;
  }
  function fmtPct(p) { var n = Math.round(Number(p) * 10) / 10; return (isFinite(n) ? n : 0) + '%'; }

  function RealTimeDashboard() {
    this.projectId = null;
    this.projects = [];
    this.socket = null;
    this.eventSource = null;
    this.subscriptions = new Set(EVENT_TYPES);
    this.transport = 'websocket';      // which one to try next
    this.wsFailures = 0;               // consecutive WebSocket failures before connection_established
    this.probe = null;                 // on SSE: a WebSocket opened to see whether it gets through now
    this.probedAt = 0;
    this.attempt = 0;                  // consecutive failed connects, for the backoff
    this.retryTimer = null;
    this.retryAt = 0;
    this.generation = 0;               // bumps on every teardown; stale callbacks check it
    this.heartbeatInterval = 30;
    this.lastHeard = 0;
    this.lastEventId = null;
    this.loading = false;
    this.buffer = [];
    this.dismissed = new Set();
    this.resetState();
  }

  RealTimeDashboard.prototype.resetState = function () {
    this.seen = new Set();
    this.seenOrder = [];
    this.fileCount = 0;
    this.files = [];
    this.commits = [];
    this.alerts = new Map();
    this.points = [];
    this.progress = null;
  };

  // --- start, projects ---------------------------------------------------------------------------
  RealTimeDashboard.prototype.start = function () {
    var self = this;
    var picker = $('project-picker');
    picker.addEventListener('change', function () { self.selectProject(picker.value); });
    window.addEventListener('offline', function () { self.goOffline(); });
    window.addEventListener('online', function () { self.attempt = 0; self.connect(); });
    setInterval(function () { self.tick(); }, 1000);
    setInterval(function () { self.refreshTimes(); }, 15000);
    this.setState('reconnecting', 'connecting…');
    this.render();
    this.loadProjects();
  };

  RealTimeDashboard.prototype.loadProjects = function () {
    var self = this;
    if (!navigator.onLine) { this.setState('offline'); return; }
    fetchJson('api/v1/projects').then(function (body) {
      self.projects = body.projects || [];
      var wanted = pageParams.get('project');
      var ids = self.projects.map(function (p) { return p.id; });
      if (wanted && ids.indexOf(wanted) < 0) { ids.push(wanted); self.projects.push({ id: wanted, progress: null }); }
      var picker = $('project-picker');
      picker.replaceChildren();
      if (!ids.length) picker.appendChild(el('option', null, 'no projects yet'));
      ids.forEach(function (id) { var o = el('option', null, id); o.value = id; picker.appendChild(o); });
      picker.disabled = !ids.length;
      self.selectProject(wanted || ids[0] || null);
    }).catch(function (error) {
      if (error.status === 401) self.refuse(error.reason);
      else self.scheduleReconnect(function () { self.loadProjects(); });
    });
  };

  RealTimeDashboard.prototype.selectProject = function (id) {
    this.projectId = id || null;
    $('project-picker').value = id || '';
    var url = new URL(location.href);
    if (id) url.searchParams.set('project', id); else url.searchParams.delete('project');
    history.replaceState(null, '', url);
    this.teardown();
    this.resetState();
    this.dismissed = new Set();
    this.lastEventId = null;
    this.render();
    var self = this;
    this.reloadHistory().then(function () { self.connect(); });
  };

  // --- history -----------------------------------------------------------------------------------
  // Loads the latest events (all four types) plus each type's own history; live events that arrive
  // meanwhile are buffered and applied after, de-duplicated by id.
  RealTimeDashboard.prototype.reloadHistory = function () {
    var self = this, project = this.projectId;
    this.loading = true;
    // the newest id of all, fetched first: the resume point when this project has no events yet
    return fetchJson('api/v1/events', { limit: 1 }).then(function (latest) {
      return Promise.all([
        fetchJson('api/v1/events', { project_id: project, event_types: EVENT_TYPES.join(','), limit: 1000 }),
        latest,
        // per type as well, so that a burst of file changes cannot push them out of the window above
        fetchJson('api/v1/events', { project_id: project, event_types: 'progress_update', limit: MAX_POINTS }),
        fetchJson('api/v1/events', { project_id: project, event_types: 'risk_alert', limit: 1000 }),
        fetchJson('api/v1/events', { project_id: project, event_types: 'auto_commit', limit: 100 })]);
    }).then(function (res) {
      if (project !== self.projectId) return;
      var buffered = self.buffer;
      self.resetState();
      self.buffer = [];
      [res[2], res[3], res[4], res[0]].forEach(function (body) {     // older windows first
        (body.events || []).forEach(function (e) { self.apply(e, true); });
      });
      self.lastEventId = res[0].last_event_id || res[1].last_event_id || self.lastEventId;
      if (!self.progress) {
        var p = self.projects.filter(function (x) { return x.id === project; })[0];
        if (p && p.progress) self.setProgress(p.progress, p.progress.timestamp);
      }
      self.loading = false;
      buffered.forEach(function (e) { self.apply(e, false); });
      self.render();
    }).catch(function () {
      self.loading = false;
      var buffered = self.buffer; self.buffer = [];
      buffered.forEach(function (e) { self.apply(e, false); });
      self.render();
    });
  };

  // --- connection --------------------------------------------------------------------------------
  RealTimeDashboard.prototype.setState = function (state, detail) {
    var node = $('connection-state');
    node.textContent = state;
    node.dataset.state = state;
    this.state = state;
    $('connection-detail').textContent = detail || '';
  };

  RealTimeDashboard.prototype.teardown = function () {
    this.generation++;
    clearTimeout(this.retryTimer); this.retryTimer = null; this.retryAt = 0;
    if (this.socket) { try { this.socket.close(1000); } catch (e) { /* closing anyway */ } this.socket = null; }
    if (this.eventSource) { this.eventSource.close(); this.eventSource = null; }
    this.dropProbe();
  };

  RealTimeDashboard.prototype.dropProbe = function () {
    if (!this.probe) return;
    this.probe.onmessage = this.probe.onclose = null;
    try { this.probe.close(1000); } catch (e) { /* closing anyway */ }
    this.probe = null;
  };

  // A refused token is not something retrying fixes: say so and stop, until the page is opened with a
  // fresh one (the server's reason says what is wrong: expired, bad signature, ...).
  RealTimeDashboard.prototype.refuse = function (reason) {
    this.teardown();
    this.setState('offline', 'not authorised' + (reason ? ': ' + reason : '') +
                  (token ? ' — open the page with a fresh ?token=' : ' — sign in again, or open the page with ?token='));
  };

  // After a connect that never got through, ask the API whether authorisation is the reason (a WebSocket
  // or an EventSource cannot see a 401; the token may come from the URL or from a cookie); if not, `retry`.
  RealTimeDashboard.prototype.unlessRefused = function (retry) {
    var self = this, gen = this.generation;
    fetchJson('api/v1/projects').then(function () { if (gen === self.generation) retry(); }, function (error) {
      if (gen !== self.generation) return;
      if (error.status === 401) self.refuse(error.reason); else retry();
    });
  };

  RealTimeDashboard.prototype.goOffline = function () {
    this.teardown();
    this.setState('offline', 'waiting for the network');
  };

  RealTimeDashboard.prototype.connect = function () {
    this.teardown();
    if (!navigator.onLine) { this.setState('offline', 'waiting for the network'); return; }
    if (!this.projectId) { this.setState('offline', 'no project'); return; }
    if (this.transport === 'websocket') this.connectWebSocket(); else this.connectSSE();
  };

  RealTimeDashboard.prototype.scheduleReconnect = function (fn) {
    var self = this;
    this.teardown();
    if (!navigator.onLine) { this.setState('offline', 'waiting for the network'); return; }
    var base = Math.min(BACKOFF_MAX, BACKOFF_MIN * Math.pow(2, this.attempt));
    var delay = Math.round(base * (0.5 + Math.random() * 0.5));      // jitter
    this.attempt++;
    this.retryAt = Date.now() + delay;
    this.setState('reconnecting', this.retryText());
    this.retryTimer = setTimeout(function () { self.retryAt = 0; (fn || function () { self.connect(); })(); }, delay);
  };

  RealTimeDashboard.prototype.retryText = function () {
    if (!this.retryAt) return '';
    var s = Math.max(0, (this.retryAt - Date.now()) / 1000);
    return 'retry in ' + (s < 10 ? s.toFixed(1) : Math.round(s)) + ' s (' + (this.transport === 'sse' ? 'SSE' : 'WebSocket') + ')';
  };

  RealTimeDashboard.prototype.tick = function () {
    if (this.state === 'reconnecting' && this.retryAt) $('connection-detail').textContent = this.retryText();
    if (this.state === 'sse' && !this.probe && Date.now() - this.probedAt > WS_PROBE_MS) this.probeWebSocket();
    if (this.probe && Date.now() - this.probedAt > WS_PROBE_TIMEOUT_MS) this.dropProbe();
    // a silent connection (no heartbeat for three intervals) is a dead one
    if ((this.state === 'websocket' || this.state === 'sse') && this.lastHeard &&
        Date.now() - this.lastHeard > Math.max(10, this.heartbeatInterval * 3) * 1000) {
      this.lastHeard = 0;
      this.scheduleReconnect();
    }
  };

  RealTimeDashboard.prototype.onConnected = function (state, info) {
    this.attempt = 0;
    this.lastHeard = Date.now();
    if (info && info.heartbeat_interval) this.heartbeatInterval = Number(info.heartbeat_interval) || 30;
    this.probedAt = Date.now();
    this.setState(state, state === 'sse' ? 'Server-Sent Events' : '');
  };

  function webSocketUrl() {
    var url = apiUrl('api/v1/dashboard/ws');
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return url;
  }

  // `greeted`: a socket that has already said connection_established (a probe), and that greeting.
  RealTimeDashboard.prototype.connectWebSocket = function (greeted) {
    var self = this, gen = this.generation, established = false;
    var socket = greeted && greeted.socket;
    if (!socket) {
      try { socket = new WebSocket(webSocketUrl()); } catch (e) { this.wsFailed(); return; }
      this.setState('reconnecting', 'connecting…');
    }
    this.socket = socket;
    function subscribe(greeting) {
      established = true;
      self.wsFailures = 0;
      socket.send(JSON.stringify({ type: 'subscribe', event_types: Array.from(self.subscriptions),
                                   project_id: self.projectId, last_event_id: self.lastEventId }));
      self.onConnected('websocket', greeting);
    }
    socket.onmessage = function (message) {
      if (gen !== self.generation) return;
      var msg;
      try { msg = JSON.parse(message.data); } catch (e) { return; }
      self.lastHeard = Date.now();
      if (msg.type === 'connection_established') {
        subscribe(msg);
      } else if (msg.type === 'subscription_confirmed') {
        if (msg.recovered === false) self.reloadHistory();
      } else if (msg.id !== undefined && msg.data !== undefined) {
        self.handleEvent(msg);
      }
    };
    socket.onclose = function (event) {
      if (gen !== self.generation) return;
      self.socket = null;
      if (event.code === TOKEN_EXPIRED_CLOSE) { self.refuse('token expired'); return; }
      if (!established) { self.wsFailed(); return; }
      self.scheduleReconnect();
    };
    socket.onerror = function () { /* onclose follows */ };
    if (greeted) subscribe(greeted.greeting);
  };

  RealTimeDashboard.prototype.wsFailed = function () {
    var self = this;
    this.unlessRefused(function () {
      self.wsFailures++;
      if (self.wsFailures >= 2) {
        self.transport = 'sse';           // WebSocket does not get through: fall back to SSE
        self.connect();
        return;
      }
      self.scheduleReconnect();
    });
  };

  // On SSE because WebSocket did not get through: now and then, open a WebSocket on the side. If it is
  // greeted, it becomes the connection and subscribes from the last event id (nothing missed, nothing
  // shown twice); if not (or not within WS_PROBE_TIMEOUT_MS), the page stays on SSE without a flicker.
  RealTimeDashboard.prototype.probeWebSocket = function () {
    var self = this, gen = this.generation, probe;
    this.probedAt = Date.now();
    try { probe = new WebSocket(webSocketUrl()); } catch (e) { return; }
    this.probe = probe;
    probe.onmessage = function (message) {
      var msg; try { msg = JSON.parse(message.data); } catch (e) { return; }
      if (msg.type !== 'connection_established' || gen !== self.generation) return;
      probe.onmessage = probe.onclose = null;
      self.probe = null;                  // it becomes the connection: not a probe to close
      self.teardown();                    // the SSE stream
      self.transport = 'websocket';
      self.connectWebSocket({ socket: probe, greeting: msg });
    };
    probe.onclose = function () { if (self.probe === probe) self.probe = null; };
  };

  RealTimeDashboard.prototype.connectSSE = function () {
    var self = this, gen = this.generation, established = false;
    var url = apiUrl('api/v1/sse/events', { event_types: Array.from(this.subscriptions).join(','),
                                            project_id: this.projectId, last_event_id: this.lastEventId });
    var source = new EventSource(url, { withCredentials: false });
    this.eventSource = source;
    this.setState('reconnecting', 'connecting (SSE)…');
    source.addEventListener('connection_established', function (m) {
      if (gen !== self.generation) return;
      established = true;
      var info = {}; try { info = JSON.parse(m.data); } catch (e) { /* defaults */ }
      self.onConnected('sse', info);
    });
    source.addEventListener('heartbeat', function () { if (gen === self.generation) self.lastHeard = Date.now(); });
    source.addEventListener('reset', function () { if (gen === self.generation) self.reloadHistory(); });
    source.onmessage = function (m) {
      if (gen !== self.generation) return;
      self.lastHeard = Date.now();
      var msg; try { msg = JSON.parse(m.data); } catch (e) { return; }
      if (msg.id !== undefined && msg.data !== undefined) self.handleEvent(msg);
    };
    source.onerror = function () {
      if (gen !== self.generation) return;
      // reopen ourselves, with last_event_id= in the URL and our own backoff. If SSE never got through
      // either, the token was refused or the server is down rather than WebSocket blocked: say so, or
      // start over with WebSocket.
      if (established) { self.scheduleReconnect(); return; }
      source.close();
      self.unlessRefused(function () {
        self.transport = 'websocket';
        self.wsFailures = 0;
        self.scheduleReconnect();
      });
    };
  };

  // --- events ------------------------------------------------------------------------------------
  RealTimeDashboard.prototype.handleEvent = function (event) {
    if (event.project_id && this.projectId && event.project_id !== this.projectId) return;
    if (this.loading) { this.buffer.push(event); this.lastEventId = event.id; return; }
    if (this.apply(event, false)) this.render();
  };

  // Applies one event to the state; false when it was seen already. `fromHistory` events make no toast.
  RealTimeDashboard.prototype.apply = function (event, fromHistory) {
    if (!event || event.id === undefined) return false;
    if (this.seen.has(event.id)) return false;
    this.seen.add(event.id);
    this.seenOrder.push(event.id);
    if (this.seenOrder.length > SEEN_MAX) this.seen.delete(this.seenOrder.shift());
    if (!fromHistory) this.lastEventId = event.id;
    var d = event.data || {};
    var ts = d.timestamp || event.timestamp;
    switch (event.type) {
      case 'file_change':
        this.fileCount++;
        this.files.unshift({ path: d.file_path, old: d.old_path, change: d.change_type, ts: ts });
        if (this.files.length > MAX_FILES) this.files.length = MAX_FILES;
        break;
      case 'auto_commit':
        if (d.event === 'result' || d.event === 'error') {
          var c = { ok: d.event === 'result' && d.success !== false, sha: d.sha, count: d.changes_count,
                    ms: d.duration_ms, reason: d.reason, ts: ts };
          this.commits.unshift(c);
          if (this.commits.length > MAX_COMMITS) this.commits.length = MAX_COMMITS;
          if (!fromHistory) this.toastCommit(c);
        }
        break;
      case 'progress_update':
        this.setProgress(d, ts);
        break;
      case 'risk_alert':
        var key = d.alert_key || d.rule || event.id;
        if (d.state === 'cleared') this.alerts.delete(key);
        else if (!this.dismissed.has(event.id)) {
          this.alerts.set(key, { id: event.id, severity: d.severity, message: d.message, rule: d.rule, ts: ts });
        }
        break;
      default:
        return false;
    }
    return true;
  };

  RealTimeDashboard.prototype.setProgress = function (d, ts) {
    this.progress = { pct: Number(d.progress_percentage) || 0, done: d.completed_tasks, total: d.total_tasks, ts: ts };
    this.points.push(this.progress.pct);
    if (this.points.length > MAX_POINTS) this.points.shift();
  };

  // --- rendering ---------------------------------------------------------------------------------
  RealTimeDashboard.prototype.render = function () {
    var p = this.progress;
    var pct = p ? Math.max(0, Math.min(100, p.pct)) : 0;
    $('progress-percentage').textContent = fmtPct(pct);
    $('progress-counts').textContent = p ? (p.done + ' / ' + p.total) : '0 / 0';
    $('progress-fill').style.width = pct + '%';
    $('progress-bar').setAttribute('aria-valuenow', String(pct));
    this.renderSparkline();
    $('file-change-count').textContent = String(this.fileCount);
    this.renderFiles();
    this.renderCommits();
    this.renderRisks();
  };

  RealTimeDashboard.prototype.renderSparkline = function () {
    var pts = this.points, n = pts.length;
    var coords = pts.map(function (v, i) {
      var x = n === 1 ? 200 : (i / (n - 1)) * 200;
      var y = 38 - (Math.max(0, Math.min(100, v)) / 100) * 36;
      return x.toFixed(1) + ',' + y.toFixed(1);
    });
    if (n === 1) coords.unshift('0,' + coords[0].split(',')[1]);
    $('sparkline-line').setAttribute('points', coords.join(' '));
  };

  function emptyItem(text) { return el('li', 'empty', text); }

  RealTimeDashboard.prototype.renderFiles = function () {
    var list = $('file-change-list');
    var items = this.files.map(function (f) {
      var li = el('li');
      li.appendChild(el('span', 'tag ' + (f.change || ''), f.change || 'change'));
      li.appendChild(el('span', 'path', f.old ? f.old + ' → ' + f.path : f.path));
      li.appendChild(timeNode(f.ts));
      return li;
    });
    list.replaceChildren.apply(list, items.length ? items : [emptyItem('No file changes yet')]);
  };

  function commitText(c) {
    var parts = [];
    if (c.sha) parts.push(String(c.sha).slice(0, 7));
    if (c.count !== undefined) parts.push(c.count + (c.count === 1 ? ' file' : ' files'));
    if (c.ms !== undefined && c.ms !== null) parts.push(Math.round(Number(c.ms)) + ' ms');
    if (!c.ok && c.reason) parts.push(c.reason);
    return parts.join(' · ');
  }

  RealTimeDashboard.prototype.renderCommits = function () {
    var list = $('commit-list');
    var items = this.commits.map(function (c) {
      var li = el('li');
      li.appendChild(el('span', 'tag ' + (c.ok ? 'ok' : 'error'), c.ok ? 'commit' : 'error'));
      li.appendChild(el('span', 'grow', commitText(c)));
      li.appendChild(timeNode(c.ts));
      return li;
    });
    list.replaceChildren.apply(list, items.length ? items : [emptyItem('No auto-commits yet')]);
  };

  RealTimeDashboard.prototype.renderRisks = function () {
    var self = this, list = $('risk-list');
    var alerts = Array.from(this.alerts.entries()).sort(function (a, b) {
      var ra = SEVERITY_RANK[a[1].severity], rb = SEVERITY_RANK[b[1].severity];
      ra = ra === undefined ? 9 : ra; rb = rb === undefined ? 9 : rb;
      return ra - rb || (Date.parse(b[1].ts) || 0) - (Date.parse(a[1].ts) || 0);
    });
    var items = alerts.map(function (entry) {
      var key = entry[0], a = entry[1];
      var li = el('li');
      li.dataset.severity = a.severity || '';
      li.appendChild(el('span', 'tag sev-' + (a.severity || 'low'), a.severity || 'alert'));
      li.appendChild(el('span', 'grow', a.message));
      li.appendChild(timeNode(a.ts));
      var btn = el('button', 'dismiss', 'Dismiss');
      btn.type = 'button';
      btn.setAttribute('aria-label', 'Dismiss alert: ' + (a.message || ''));
      btn.addEventListener('click', function () {
        self.dismissed.add(a.id);
        self.alerts.delete(key);
        self.renderRisks();
        var next = list.querySelector('button.dismiss');
        if (next) next.focus();
      });
      li.appendChild(btn);
      return li;
    });
    list.replaceChildren.apply(list, items.length ? items : [emptyItem('No open risk alerts')]);
  };

  RealTimeDashboard.prototype.refreshTimes = function () {
    document.querySelectorAll('main time[datetime]').forEach(function (t) { t.textContent = relTime(t.dateTime); });
  };

  RealTimeDashboard.prototype.toastCommit = function (c) {
    var region = $('toast-region');
    var toast = el('div', 'toast' + (c.ok ? '' : ' error'));
    toast.setAttribute('role', 'status');
    toast.appendChild(el('p', null, (c.ok ? 'Auto-commit ' : 'Auto-commit failed: ') + commitText(c)));
    var close = el('button', null, '×');
    close.type = 'button';
    close.setAttribute('aria-label', 'Close notification');
    close.addEventListener('click', function () { toast.remove(); });
    toast.appendChild(close);
    region.appendChild(toast);
    while (region.children.length > MAX_TOASTS) region.firstElementChild.remove();
    setTimeout(function () { toast.remove(); }, TOAST_MS);
  };

  var dashboard = new RealTimeDashboard();
  window.autopmDashboard = dashboard;
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', function () { dashboard.start(); });
  else dashboard.start();
})();
