// hivemesh dashboard: each page polls its JSON under /dashboard/api every 2 s and re-renders when it changed.
// Everything a miner or user could have written reaches the page as text (textContent), never as HTML.
"use strict";
(() => {
  const POLL_MS = 2000;
  const page = document.body.dataset.page;
  const app = document.getElementById("app");

  // ------------------------------------------------------------------ DOM and formatting helpers

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "style") el.style.cssText = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : word.endsWith("s") ? "es" : "s"}`;

  const fmt = {
    num(v, digits = 0) {
      if (v === null || v === undefined) return "\u2013";
      return Number(v).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
    },
    score: (v) => (v === null || v === undefined ? "\u2013" : Number(v).toFixed(3)),
    pct: (v) => (v === null || v === undefined ? "\u2013" : (v * 100).toFixed(1) + "%"),
    ms(v) {
      if (v === null || v === undefined) return "\u2013";
      return v >= 10000 ? (v / 1000).toFixed(1) + " s" : Math.round(v) + " ms";
    },
    time(ts) {
      if (!ts) return "\u2013";
      return new Date(ts * 1000).toLocaleTimeString("en-GB", { hour12: false });
    },
    datetime(ts) {
      if (!ts) return "\u2013";
      const d = new Date(ts * 1000);
      return d.toLocaleDateString("en-CA") + " " + d.toLocaleTimeString("en-GB", { hour12: false });
    },
    hour: (ts) => String(new Date(ts * 1000).getHours()).padStart(2, "0") + ":00",
    duration(s) {
      s = Math.max(0, Math.floor(s));
      if (s < 60) return s + "s";
      if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
      return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    },
    addr: (a) => (a && a.length > 14 ? a.slice(0, 8) + "\u2026" + a.slice(-6) : a || "\u2013"),
    id: (t) => (t && t.length > 18 ? t.slice(0, 16) + "\u2026" : t || "\u2013"),
  };

  // Score -> colour: red (0) through amber (0.5) to green (1); the same stops draw the legend.
  const STOPS = [[0, [198, 40, 40]], [0.5, [240, 165, 0]], [0.75, [124, 179, 66]], [1, [26, 127, 55]]];
  function colour(t) {
    t = Math.min(1, Math.max(0, t));
    for (let i = 1; i < STOPS.length; i++) {
      const [t1, c1] = STOPS[i];
      const [t0, c0] = STOPS[i - 1];
      if (t <= t1) {
        const f = (t - t0) / (t1 - t0);
        return "rgb(" + c0.map((c, j) => Math.round(c + (c1[j] - c) * f)).join(",") + ")";
      }
    }
    return "rgb(26,127,55)";
  }
  const gradient = () => "linear-gradient(90deg," + STOPS.map(([t, c]) => `rgb(${c}) ${t * 100}%`).join(",") + ")";

  const nodeLink = (addr) => h("a", { href: "/dashboard/nodes/" + encodeURIComponent(addr), class: "mono", title: addr }, fmt.addr(addr));
  const taskLink = (id) => h("a", { href: "/dashboard/tasks/" + encodeURIComponent(id), class: "mono", title: id }, fmt.id(id));
  const sessionLink = (id) => h("a", { href: "/dashboard/tasks?session=" + encodeURIComponent(id), class: "mono", title: id }, fmt.id(id));

  const VERDICT_CLASS = { verified: "good", disputed: "bad", unverified: "neutral", failed: "bad" };
  const verdictBadge = (v) => (v ? h("span", { class: "badge " + (VERDICT_CLASS[v] || "neutral") }, v) : h("span", { class: "muted" }, "\u2013"));
  const phaseBadge = (p) => h("span", { class: "badge " + (p === "ended" ? "good" : p === "failed" ? "bad" : "accent") }, p);
  const BAD_EVENTS = new Set(["bad_reveal", "timeout", "dissent", "quarantined", "level_down", "bad_signature", "replay", "garbage", "unsolicited", "stream_mismatch"]);
  const GOOD_EVENTS = new Set(["level_up", "released"]);
  const eventBadge = (k) => h("span", { class: "badge " + (BAD_EVENTS.has(k) ? "bad" : GOOD_EVENTS.has(k) ? "good" : "neutral") }, k.replace(/_/g, " "));

  // A score under its floor is marked once the floor applies (enough tasks in the window); before that, only hinted.
  function floorClass(value, floor, assigned, minSamples) {
    if (floor === undefined || value >= floor) return "";
    return assigned >= minSamples ? "below" : "provisional";
  }
  const floorTitle = (cls, floor, minSamples) =>
    cls === "below" ? `below the floor ${floor.toFixed(2)}` : cls ? `below the floor ${floor.toFixed(2)}, but fewer than ${minSamples} tasks: the floor does not apply yet` : null;

  function panel(title, note, ...body) {
    return h("section", { class: "panel" }, h("header", {}, h("h2", {}, title), note ? h("span", { class: "note" }, note) : null), ...body);
  }
  function card(label, value, sub, stat) {
    return h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value", "data-stat": stat }, value), h("div", { class: "sub" }, sub || ""));
  }
  function table(headers, rows, attrs) {
    return h("table", attrs || {}, h("thead", {}, h("tr", {}, headers)), h("tbody", {}, rows));
  }
  const emptyState = (text) => h("div", { class: "empty-state" }, text);

  // ------------------------------------------------------------------ polling

  const live = document.getElementById("live");
  const liveText = document.getElementById("live-text");
  function setLive(state, text) {
    live.dataset.state = state;
    liveText.textContent = text;
  }

  // Fetch ``url`` now and every POLL_MS (paused while the tab is hidden); ``render(data)`` runs when it changed.
  function poll(url, render) {
    let last = null;
    let timer = null;
    async function tick() {
      clearTimeout(timer);
      try {
        const res = await fetch(url, { headers: { accept: "application/json" }, cache: "no-store" });
        const text = await res.text();
        if (!res.ok) {
          let msg = res.status + " " + res.statusText;
          try { msg = JSON.parse(text).error.message; } catch (_) { /* not JSON */ }
          app.replaceChildren(h("section", { class: "panel" }, emptyState(msg)));
          setLive("error", "not found");
          return; // a missing node or task does not appear by polling
        }
        if (text !== last) {
          last = text;
          render(JSON.parse(text));
        }
        setLive("live", "live \u00b7 " + fmt.time(Date.now() / 1000));
      } catch (err) {
        setLive("error", "router unreachable, retrying");
      }
      if (!document.hidden) timer = setTimeout(tick, POLL_MS);
    }
    document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
    tick();
  }

  // ------------------------------------------------------------------ overview: cards, activity, heatmap rank table

  const SORTS = {
    node: { label: "Node", get: (r) => r.node },
    level: { label: "Level", get: (r) => r.level },
    total: { label: "Total", get: (r) => r.scores.total, floor: "min_total" },
    precommit: { label: "Precommit", get: (r) => r.scores.precommit, floor: "min_precommit" },
    commit: { label: "Commit", get: (r) => r.scores.commit },
    agreement: { label: "Agreement", get: (r) => r.scores.agreement },
    tokens_per_s: { label: "Tokens/s", get: (r) => r.scores.tokens_per_s },
  };
  const sortState = { key: "total", dir: -1 };

  function overviewPage() {
    const state = { overview: null, nodes: null };
    const draw = () => {
      if (!state.overview || !state.nodes) return;
      app.replaceChildren(renderOverview(state.overview), renderHeatmap(state.nodes));
    };
    poll("/dashboard/api/overview", (d) => { state.overview = d; draw(); });
    poll("/dashboard/api/nodes", (d) => { state.nodes = d; draw(); });
  }

  function renderOverview(o) {
    const hour = o.last_hour;
    const phases = o.tasks_by_phase;
    const running = o.tasks_total - (phases.ended || 0) - (phases.failed || 0);
    const bars = o.per_minute;
    const top = Math.max(1, ...bars);
    return h("div", {},
      h("div", { class: "title" }, h("h1", {}, "Network")),
      h("div", { class: "subtitle" }, "Router ", h("span", { class: "mono" }, o.router), " \u00b7 up " + fmt.duration(o.uptime_s)),
      h("div", { class: "cards" },
        card("Nodes online", fmt.num(o.nodes.online),
          [fmt.num(o.nodes.quarantined) + " quarantined \u00b7 " + fmt.num(o.nodes.known) + " known"], "nodes_online"),
        card("Tasks / min", fmt.num(o.tasks_per_min), "finished in the last minute", "tasks_per_min"),
        card("Verified share", fmt.pct(o.verified_share),
          hour.finished ? `${hour.verified} of ${hour.finished} in the last hour` : "no task finished in the last hour", "verified_share"),
        card("Tokens / s", fmt.num(o.tokens_per_s, 1), fmt.num(o.tokens_last_min) + " tokens in the last minute", "tokens_per_s"),
        card("Tasks", fmt.num(o.tasks_total), `${fmt.num(running)} running \u00b7 ${fmt.num(phases.failed || 0)} failed`, "tasks_total"),
        card("Queue", fmt.num(o.queue_depth), `${fmt.num(o.inflight)} of ${fmt.num(o.capacity)} miner slots busy`, "queue_depth"),
      ),
      panel("Tasks per minute", "last 30 minutes \u00b7 " + `${hour.verified} verified, ${hour.disputed} disputed, ${hour.unverified} unverified, ${hour.failed} failed in the last hour`,
        h("div", { class: "body" },
          h("div", { class: "bars" }, bars.map((n, i) => h("div", { style: `height:${(n / top) * 100}%`, title: `${n} tasks, ${bars.length - 1 - i} min ago` }))),
          h("div", { class: "bars-axis" }, h("span", {}, "30 min ago"), h("span", {}, "now")))),
    );
  }

  function renderHeatmap(d) {
    const f = d.floors;
    const spec = SORTS[sortState.key];
    const rows = [...d.data].sort((a, b) => {
      const x = spec.get(a), y = spec.get(b);
      return (x < y ? -1 : x > y ? 1 : 0) * sortState.dir || a.node.localeCompare(b.node);
    });
    const th = (key, cls) => {
      const s = SORTS[key];
      const sorted = sortState.key === key;
      return h("th", {
        class: "sortable " + (cls || ""),
        "data-sort": key,
        "aria-sort": sorted ? (sortState.dir < 0 ? "descending" : "ascending") : null,
        title: "Sort by " + s.label.toLowerCase(),
        onclick: () => {
          sortState.dir = sorted ? -sortState.dir : key === "node" ? 1 : -1;
          sortState.key = key;
          app.replaceChildren(app.firstChild, renderHeatmap(d));
        },
      }, s.label, h("span", { class: "arrow" }), s.floor ? h("span", { class: "floor" }, "\u2265 " + f[s.floor].toFixed(2)) : null);
    };
    const last = d.hours.length - 1;
    const hourHeads = d.hours.map((ts, i) => h("th", { class: "hour" }, (last - i) % 3 === 0 ? fmt.hour(ts).slice(0, 2) : ""));
    const body = rows.map((r, i) => {
      const cells = new Map(r.hours.map((c) => [c.hour, c]));
      const sc = r.scores;
      const scoreCell = (key, floor) => {
        const cls = floorClass(sc[key], floor, r.assigned, f.min_samples);
        return h("td", { class: "num " + cls, title: floorTitle(cls, floor, f.min_samples) }, fmt.score(sc[key]));
      };
      return h("tr", { "data-node": r.node },
        h("td", { class: "num muted" }, i + 1),
        h("td", {}, h("span", { class: "status-dot" + (r.online ? " on" : ""), title: r.online ? "online, connected to router " + r.router : "offline" }), nodeLink(r.node),
          r.quarantined ? h("span", { class: "badge bad" }, "quarantined") : null),
        h("td", { class: "num" }, r.level),
        scoreCell("total", f.min_total),
        scoreCell("precommit", f.min_precommit),
        h("td", { class: "num" }, fmt.score(sc.commit)),
        h("td", { class: "num" }, fmt.score(sc.agreement)),
        h("td", { class: "num" }, fmt.num(sc.tokens_per_s, 1)),
        h("td", { class: "gap" }),
        d.hours.map((ts) => {
          const c = cells.get(ts);
          if (!c || !c.assigned) return h("td", { class: "cell empty", title: fmt.hour(ts) + " \u00b7 no tasks" });
          return h("td", {
            class: "cell" + (c.total < f.min_total ? " low" : ""),
            style: "background-color:" + colour(c.total),
            title: `${fmt.hour(ts)} \u00b7 total ${fmt.score(c.total)} \u00b7 ${c.assigned} tasks`,
          });
        }),
      );
    });
    const legend = h("div", { class: "legend" },
      "score 0",
      h("div", { class: "scale", style: "background:" + gradient() },
        h("div", { class: "tick", style: `left:calc(${f.min_total * 100}% - 1px)` }, h("span", {}, "floor " + f.min_total.toFixed(2)))),
      "1",
      h("span", {}, h("span", { class: "swatch", style: "background:var(--empty)" }), "no tasks"),
    );
    const note = `Total score per hour, last ${d.hours.length} h. Quarantined below total ${f.min_total.toFixed(2)} or precommit ` +
      `${f.min_precommit.toFixed(2)} or agreement ${(f.min_agreement ?? 0.5).toFixed(2)} (after ${f.min_samples} tasks in the ${Math.round(d.window_s / 3600)} h window); striped hours are below the floor.`;
    return h("section", { class: "panel" }, h("header", {}, h("h2", {}, "Nodes"), h("span", { class: "note" }, note), legend),
      rows.length
        ? h("div", { class: "scroll" }, table(
            [h("th", { class: "num" }, "#"), th("node"), th("level", "num"), th("total", "num"), th("precommit", "num"),
              th("commit", "num"), th("agreement", "num"), th("tokens_per_s", "num"), h("th", { class: "gap" }), hourHeads],
            body, { class: "heat", id: "heatmap" }))
        : emptyState("No miner has joined yet. Start one with `hivemesh miner --router URL`."));
  }

  // ------------------------------------------------------------------ node page

  function nodePage() {
    const address = decodeURIComponent(location.pathname.split("/").pop());
    document.title = fmt.addr(address) + " \u00b7 hivemesh";
    poll("/dashboard/api/nodes/" + encodeURIComponent(address), renderNode);
  }

  function scoreCard(label, v, floor, stat, n) {
    const cls = floorClass(v, floor, n.counters.assigned, n.floors.min_samples);
    return h("div", { class: "card" },
      h("div", { class: "label" }, label),
      h("div", { class: "value " + cls, "data-stat": stat, title: floorTitle(cls, floor, n.floors.min_samples) }, fmt.score(v)),
      h("div", { class: "meter" }, h("div", { style: `width:${v * 100}%;background:${colour(v)}` }),
        floor !== undefined ? h("div", { class: "floor", style: `left:${floor * 100}%`, title: "floor " + floor }) : null),
      h("div", { class: "sub" }, floor !== undefined ? "floor " + floor.toFixed(2) : ""));
  }

  function renderNode(n) {
    const sc = n.scores, c = n.counters, f = n.floors;
    const heat = new Map(n.heat.map((x) => [x.hour, x]));
    const ln = n.link;
    const counters = [
      ["assigned", c.assigned], ["acked", c.acked], ["precommitted on time", c.precommitted_on_time],
      ["committed", c.committed], ["valid reveals", c.valid_reveals], ["in consensus", c.in_consensus],
      ["dissents", c.dissents], ["timeouts", c.timeouts], ["bad reveals", c.bad_reveals],
      ["tokens", c.tokens], ["mean time to first token", c.ttft_samples ? fmt.ms(c.ttft_ms_total / c.ttft_samples) : "\u2013"],
    ];
    app.replaceChildren(
      h("div", { class: "title" },
        h("h1", {}, "Node ", h("span", { class: "mono", id: "node-address" }, n.node)),
        h("span", { class: "badge " + (n.online ? "good" : "neutral") }, n.online ? "online" : "offline"),
        n.quarantined ? h("span", { class: "badge bad" }, "quarantined") : null),
      h("div", { class: "subtitle" }, ln ? `Serves ${ln.models.join(", ") || "no model"}` : "Not connected", n.last_seen ? " \u00b7 last seen " + fmt.datetime(n.last_seen) : ""),
      h("div", { class: "cards" },
        h("div", { class: "card" }, h("div", { class: "label" }, "Level"), h("div", { class: "value", "data-stat": "level" }, n.level, h("small", {}, "/ 10")),
          h("div", { class: "sub" }, n.streak ? `${plural(Math.abs(n.streak), n.streak > 0 ? "success" : "failure")} in a row` : "no streak")),
        scoreCard("Total", sc.total, f.min_total, "total", n),
        scoreCard("Precommit", sc.precommit, f.min_precommit, "precommit", n),
        scoreCard("Commit", sc.commit, undefined, "commit", n),
        scoreCard("Agreement", sc.agreement, undefined, "agreement", n),
        card("Tokens / s", fmt.num(sc.tokens_per_s, 1), "over the window", "tokens_per_s")),
      panel("Last 24 hours", "total score per hour",
        h("div", { class: "body" },
          h("div", { class: "strip" }, n.hours.map((ts) => {
            const x = heat.get(ts);
            if (!x || !x.assigned) return h("div", { class: "cell empty", title: fmt.hour(ts) + " \u00b7 no tasks" });
            return h("div", { class: "cell" + (x.total < f.min_total ? " low" : ""), style: "background-color:" + colour(x.total), title: `${fmt.hour(ts)} \u00b7 total ${fmt.score(x.total)} \u00b7 ${x.assigned} tasks` });
          })),
          h("div", { class: "strip-axis" }, h("span", {}, fmt.hour(n.hours[0])), h("span", {}, fmt.hour(n.hours[12])), h("span", {}, "now")))),
      h("div", { class: "two" },
        panel("How the score is computed", `counters over the last ${Math.round(n.window_s / 3600)} h`,
          h("div", { class: "body" },
            h("pre", { class: "formula" }, n.formula),
            h("dl", { class: "kv" }, counters.map(([k, v]) => [h("dt", {}, k), h("dd", {}, typeof v === "number" ? fmt.num(v) : v)])),
            h("p", { class: "muted" }, `Quarantined from user sessions while total < ${f.min_total}, precommit < ${f.min_precommit} or agreement < ${f.min_agreement ?? 0.5}, once it has ${f.min_samples} tasks in the window.`))),
        panel("Connection", null,
          h("div", { class: "body" },
            ln
              ? h("dl", { class: "kv" },
                  h("dt", {}, "router"), h("dd", { class: "mono", id: "node-router" }, ln.router),
                  h("dt", {}, "models"), h("dd", {}, ln.models.join(", ") || "\u2013"),
                  h("dt", {}, "capacity"), h("dd", {}, `${ln.inflight} busy of ${ln.capacity}`),
                  h("dt", {}, "hardware"), h("dd", {}, `${ln.hardware.cpus} CPUs \u00b7 ${ln.hardware.ram_gb} GB RAM` + (ln.hardware.gpu ? " \u00b7 " + ln.hardware.gpu : "")),
                  h("dt", {}, "version"), h("dd", {}, ln.version || "\u2013"),
                  h("dt", {}, "connected"), h("dd", {}, fmt.datetime(ln.connected_at)),
                  h("dt", {}, "tasks finished"), h("dd", {}, fmt.num(ln.tasks_finished)),
                  h("dt", {}, "first seen"), h("dd", {}, fmt.datetime(n.first_seen)))
              : emptyState("This node is not connected now.")))),
      panel("Events that moved the score", "penalties, level changes and quarantine, newest first; every task in consensus raises the score",
        n.events.length
          ? h("div", { class: "scroll" }, table(
              [h("th", {}, "Time"), h("th", {}, "Event"), h("th", {}, "Task"), h("th", {}, "Detail")],
              n.events.map((e) => h("tr", {}, h("td", { class: "muted" }, fmt.datetime(e.at)), h("td", {}, eventBadge(e.kind)),
                h("td", {}, e.task_id ? taskLink(e.task_id) : "\u2013"), h("td", {}, e.detail))), { id: "events" }))
          : emptyState("Nothing yet: no penalty, level change or quarantine recorded.")),
    );
  }

  // ------------------------------------------------------------------ sessions and tasks

  function sessionsPage() {
    poll("/dashboard/api/sessions", (d) => {
      app.replaceChildren(
        h("div", { class: "title" }, h("h1", {}, "Sessions")),
        h("div", { class: "subtitle" }, "Newest first. A session fixes the model, redundancy k, quorum m, validation mode and SLA tier of its tasks."),
        panel("Sessions", `${d.data.length} shown`,
          d.data.length
            ? h("div", { class: "scroll" }, table(
                ["Session", "Name", "Model", "k / m", "Mode", "SLA", "Tasks", "Last task", "Created", "Status"].map((x, i) => h("th", { class: i === 6 ? "num" : "" }, x)),
                d.data.map((x) => h("tr", {},
                  h("td", {}, sessionLink(x.id)), h("td", {}, x.name || (x.default ? "default" : "\u2013")), h("td", {}, x.model || "any"),
                  h("td", {}, `${x.redundancy} / ${x.quorum}`), h("td", {}, x.mode), h("td", {}, x.sla), h("td", { class: "num" }, fmt.num(x.tasks)),
                  h("td", { class: "muted" }, fmt.datetime(x.last_task_at)), h("td", { class: "muted" }, fmt.datetime(x.created_at)),
                  h("td", {}, h("span", { class: "badge " + (x.active ? "good" : "neutral") }, x.active ? "active" : "closed")))), { id: "sessions" }))
            : emptyState("No session yet.")));
    });
  }

  function tasksPage() {
    const session = new URLSearchParams(location.search).get("session");
    const url = "/dashboard/api/tasks" + (session ? "?session=" + encodeURIComponent(session) : "");
    poll(url, (d) => {
      app.replaceChildren(
        h("div", { class: "title" }, h("h1", {}, "Tasks")),
        h("div", { class: "subtitle" }, session ? ["In session ", h("span", { class: "mono" }, session), " \u00b7 ", h("a", { href: "/dashboard/tasks" }, "all tasks")] : "The latest tasks of every session, newest first."),
        panel("Tasks", `${d.data.length} shown`,
          d.data.length
            ? h("div", { class: "scroll" }, table(
                ["Task", "Session", "Model", "Phase", "Verdict", "Miners", "Tokens", "Duration", "Created"].map((x, i) => h("th", { class: i >= 5 && i <= 7 ? "num" : "" }, x)),
                d.data.map((t) => h("tr", { "data-task": t.id },
                  h("td", {}, taskLink(t.id)), h("td", {}, sessionLink(t.session_id)), h("td", {}, t.model), h("td", {}, phaseBadge(t.phase)),
                  h("td", {}, verdictBadge(t.verdict)), h("td", { class: "num" }, t.miners || "\u2013"),
                  h("td", { class: "num" }, t.completion_tokens === null ? "\u2013" : fmt.num(t.completion_tokens)),
                  h("td", { class: "num" }, fmt.ms(t.duration_ms)), h("td", { class: "muted" }, fmt.datetime(t.created_at)))), { id: "tasks" }))
            : emptyState("No task yet.")));
    });
  }

  function taskPage() {
    const id = decodeURIComponent(location.pathname.split("/").pop());
    poll("/dashboard/api/tasks/" + encodeURIComponent(id), renderTask);
  }

  function renderTask(t) {
    const first = new Map();
    for (const e of t.timeline) if (!first.has(e.phase)) first.set(e.phase, e.at_ms);
    const failed = t.phase === "failed";
    const reached = Math.max(...t.phases.map((p, i) => (first.has(p) || p === t.phase ? i : 0)));
    const steps = t.phases.map((p, i) => {
      const done = i <= reached && !(failed && !first.has(p));
      return h("div", { class: "step" + (done ? " done" : "") }, h("b", {}, p), first.has(p) ? "+" + fmt.ms(first.get(p)) : p === "queued" ? "+0 ms" : "");
    });
    if (failed) steps.push(h("div", { class: "step failed" }, h("b", {}, "failed"), first.has("failed") ? "+" + fmt.ms(first.get("failed")) : ""));
    const v = t.verification;
    const end = Math.max(1, ...t.timeline.map((e) => e.at_ms || 0));
    const pos = (ms) => `${(ms / end) * 100}%`;
    const lanes = t.miners.map((m) => {
      const stop = m.commit_ms ?? m.precommit_ms ?? m.acked_ms ?? m.assigned_ms;
      const cls = m.in_consensus === true ? " good" : m.in_consensus === false || m.status === "failed" ? " bad" : "";
      return h("div", { class: "lane" },
        h("div", {}, nodeLink(m.node)),
        h("div", { class: "track" },
          h("div", { class: "span" + cls, style: `left:${pos(m.assigned_ms)};width:calc(${pos(stop - m.assigned_ms)} + 2px)` }),
          m.acked_ms !== null ? h("div", { class: "mark ack", style: "left:" + pos(m.acked_ms), title: "ack +" + fmt.ms(m.acked_ms) }) : null,
          m.precommit_ms !== null ? h("div", { class: "mark pre", style: "left:" + pos(m.precommit_ms), title: "precommit +" + fmt.ms(m.precommit_ms) }) : null,
          m.commit_ms !== null ? h("div", { class: "mark com", style: "left:" + pos(m.commit_ms), title: "commit +" + fmt.ms(m.commit_ms) }) : null));
    });
    app.replaceChildren(
      h("div", { class: "title" }, h("h1", {}, "Task ", h("span", { class: "mono", id: "task-id" }, t.id)), phaseBadge(t.phase), verdictBadge(t.verdict)),
      h("div", { class: "subtitle" }, `${t.kind} \u00b7 ${t.model} \u00b7 session `, sessionLink(t.session_id), ` \u00b7 created ${fmt.datetime(t.created_at)}`,
        t.duration_ms !== null ? ` \u00b7 took ${fmt.ms(t.duration_ms)}` : "", t.error ? h("div", { style: "color:var(--bad)" }, t.error) : null),
      panel("Proof of useful work", "phase reached, time since the task was created", h("div", { class: "stepper", id: "phases" }, steps)),
      h("div", { class: "two" },
        panel("Miners", "assigned \u2192 ack \u2192 precommit \u2192 commit",
          h("div", { class: "lanes" }, lanes.length ? lanes : emptyState("No miner was assigned."),
            h("div", { class: "lane-axis" }, h("div", {}), h("div", {}, h("span", {}, "0"), h("span", {}, "+" + fmt.ms(end)))),
            h("div", { class: "lane-legend" }, h("span", {}, h("i", { class: "mark ack", style: "position:static;display:inline-block;background:var(--muted)" }), "ack"),
              h("span", {}, h("i", { style: "background:var(--warn);border-radius:2px" }), "precommit"), h("span", {}, h("i", { style: "background:var(--accent)" }), "commit")))),
        panel("Verification", null,
          h("div", { class: "body" }, h("dl", { class: "kv" },
            h("dt", {}, "verdict"), h("dd", {}, verdictBadge(t.verdict)),
            h("dt", {}, "mode"), h("dd", {}, v.mode || "\u2013"),
            h("dt", {}, "agreement"), h("dd", {}, fmt.score(v.agreement)),
            h("dt", {}, "similarity"), h("dd", {}, fmt.score(v.similarity)),
            h("dt", {}, "answered by"), h("dd", {}, v.answered_by ? nodeLink(v.answered_by) : "\u2013"),
            h("dt", {}, "consensus"), h("dd", {}, (v.consensus || []).length ? v.consensus.map((n) => [nodeLink(n), " "]) : "\u2013"),
            h("dt", {}, "dissent"), h("dd", {}, (v.dissent || []).length ? v.dissent.map((n) => [nodeLink(n), " "]) : "none"),
            h("dt", {}, "tokens"), h("dd", {}, `${fmt.num(t.prompt_tokens)} prompt \u00b7 ${fmt.num(t.completion_tokens)} completion`),
            t.cost !== null && t.cost !== undefined ? [h("dt", {}, "cost"), h("dd", { id: "task-cost" }, cor(t.cost), " \u00b7 ", h("a", { href: "/dashboard/payments" }, "payments"))] : null,
            h("dt", {}, "seed"), h("dd", { class: "mono" }, t.seed))))),
      panel("Assignments", null, h("div", { class: "scroll" }, table(
        ["Slot", "Node", "Status", "Ack", "Precommit", "Commit", "Generation", "TTFT", "Tokens", "Consensus", "Precommit digest"].map((x) => h("th", {}, x)),
        t.miners.map((m) => h("tr", {},
          h("td", { class: "num" }, m.slot), h("td", {}, nodeLink(m.node)),
          h("td", {}, h("span", { class: "badge " + (m.status === "failed" ? "bad" : m.status === "committed" ? "good" : "neutral") }, m.status), m.reason ? h("span", { class: "muted" }, " " + m.reason) : null),
          h("td", {}, fmt.ms(m.acked_ms)), h("td", {}, fmt.ms(m.precommit_ms)), h("td", {}, fmt.ms(m.commit_ms)),
          h("td", {}, fmt.ms(m.elapsed_ms)), h("td", {}, fmt.ms(m.ttft_ms)), h("td", {}, fmt.num(m.completion_tokens)),
          h("td", {}, m.in_consensus === null ? "\u2013" : m.in_consensus ? h("span", { class: "badge good" }, "agrees") : h("span", { class: "badge bad" }, "dissent")),
          h("td", { class: "mono muted", title: m.precommit || "" }, m.precommit ? m.precommit.slice(0, 18) + "\u2026" : "\u2013"))), { id: "miners" }))),
      panel("Event log", `${t.timeline.length} events`, h("div", { class: "scroll" }, table(
        ["Time", "Phase", "Node", "Detail"].map((x) => h("th", {}, x)),
        t.timeline.map((e) => h("tr", {}, h("td", { class: "muted" }, "+" + fmt.ms(e.at_ms)), h("td", {}, e.phase), h("td", {}, e.node ? nodeLink(e.node) : "\u2013"),
          h("td", { class: "muted" }, Object.entries(e.detail).map(([k, x]) => `${k}=${typeof x === "object" ? JSON.stringify(x) : x}`).join(" "))))))),
    );
  }

  // ------------------------------------------------------------------ payments

  // Amounts arrive as decimal strings in the smallest unit (10^-18 COR) and are handled as BigInt, never as floats.
  const UNIT = 10n ** 18n, SHOWN = 10n ** 12n; // shown to 6 decimals: one step is 10^12 units
  function corText(raw) {
    let v = BigInt(raw);
    const neg = v < 0n;
    if (neg) v = -v;
    const micro = (v + SHOWN / 2n) / SHOWN;
    if (micro === 0n && v > 0n) return (neg ? "> -" : "< ") + "0.000001";
    const whole = (micro / 10n ** 6n).toLocaleString("en-US");
    const frac = (micro % 10n ** 6n).toString().padStart(6, "0").replace(/0+$/, "");
    return (neg ? "-" : "") + whole + (frac ? "." + frac : "");
  }
  const exact = (raw) => BigInt(raw).toLocaleString("en-US") + " \u00d7 10\u207b\u00b9\u2078 COR";
  const cor = (raw, unit = true) =>
    raw === null || raw === undefined ? h("span", { class: "muted" }, "\u2013")
      : h("span", { class: "cor", title: exact(raw), "data-amount": raw }, corText(raw), unit ? h("small", {}, " COR") : null);

  // An account name as a link where the dashboard has a page for it: a node, a session (escrow), a task (hold).
  function accountLink(name, known) {
    const [prefix, ref] = name.includes(":") ? [name.slice(0, name.indexOf(":")), name.slice(name.indexOf(":") + 1)] : ["", name];
    if (!prefix && name.startsWith("0x")) return known.has(name) ? nodeLink(name) : h("span", { class: "mono", title: name }, fmt.addr(name));
    if (prefix === "escrow") return h("span", {}, h("span", { class: "muted" }, "escrow "), sessionLink(ref));
    if (prefix === "hold") return h("span", {}, h("span", { class: "muted" }, "hold "), taskLink(ref));
    if (prefix === "stake" || prefix === "unstaking") return h("span", {}, h("span", { class: "muted" }, prefix + " "), known.has(ref) ? nodeLink(ref) : h("span", { class: "mono", title: ref }, fmt.addr(ref)));
    return h("span", { class: "sys" }, name.replace("_", " "));
  }

  const ENTRY_CLASS = { deposit: "good", payout: "good", reward: "good", charge: "accent", slash: "bad", withdraw: "warn" };

  function paymentsPage() {
    poll("/dashboard/api/payments", renderPayments);
  }

  function renderPayments(d) {
    const head = [h("div", { class: "title" }, h("h1", {}, "Payments")),
      h("div", { class: "subtitle" }, "Every movement of COR in the router's ledger: deposits, escrow, task payouts, protocol fees and stake. Hover an amount for its exact value.")];
    if (!d.ledger) {
      app.replaceChildren(...head, h("section", { class: "panel", id: "no-ledger" }, emptyState("No ledger: this router runs without one, so nothing is billed or paid.")));
      return;
    }
    const t = d.totals;
    const known = new Set(d.top_nodes.map((n) => n.address));
    const flow = (side) => h("div", { class: "flow" }, side.map((p) => h("div", {}, accountLink(p.account, known), side.length > 1 ? [" ", cor(p.amount, false)] : null)));
    app.replaceChildren(
      ...head,
      h("div", { class: "cards" },
        card("Balances", cor(t.balances), "spendable, on user and node accounts", "balances"),
        card("In escrow", cor(t.in_escrow), ["sessions ", corText(t.escrow), " \u00b7 held for tasks ", corText(t.holds)], "in_escrow"),
        card("Staked", cor(t.staked), ["active ", corText(t.stake), " \u00b7 unstaking ", corText(t.unstaking)], "staked"),
        card("Treasury", cor(t.treasury), "protocol fees and slashed stake", "treasury"),
        card("Reward pool", cor(t.reward_pool), "pays epoch rewards", "reward_pool"),
        card("Deposited", cor(t.deposited), "deposits minus withdrawals: the sum of all of the above", "deposited"),
      ),
      d.chain ? panel("Chain settlement", d.chain.rpc_url, h("div", { id: "chain", "data-state": d.chain.state },
          h("span", { class: "badge " + (d.chain.state === "unreachable" || d.chain.state === "retrying" ? "bad" : "good") }, d.chain.state),
          ` ${d.chain.pending_entries} journal entries waiting \u00b7 ${d.chain.batches} batches, ${d.chain.tasks_settled} tasks settled on chain`,
          d.chain.last_batch ? ` \u00b7 last batch: ${d.chain.last_batch.tasks} tasks, ${d.chain.last_batch.gas} gas, block ${d.chain.last_batch.block}` : "",
          d.chain.failed.length ? h("div", { class: "muted" }, `left out (they revert): ${d.chain.failed.join(", ")}`) : null,
          d.chain.last_error ? h("div", { class: "muted" }, `last error: ${d.chain.last_error}`) : null)) : null,
      panel("Recent entries", `the latest ${d.entries.length}, newest first`,
          d.entries.length
            ? h("div", { class: "scroll" }, table(
                ["Time", "Kind", "Amount", "From", "", "To", "Task", "Session"].map((x, i) => h("th", { class: i === 2 ? "num" : "" }, x)),
                d.entries.map((e) => h("tr", { "data-entry": e.id, "data-kind": e.kind, title: e.reason || null },
                  h("td", { class: "muted" }, fmt.time(e.at)),
                  h("td", {}, h("span", { class: "badge " + (ENTRY_CLASS[e.kind] || "neutral") }, e.kind)),
                  h("td", { class: "num" }, cor(e.amount)),
                  h("td", {}, flow(e.from)), h("td", { class: "muted" }, "\u2192"), h("td", {}, flow(e.to)),
                  h("td", {}, e.task_id ? taskLink(e.task_id) : "\u2013"),
                  h("td", {}, e.session_id ? sessionLink(e.session_id) : "\u2013"))), { id: "entries" }))
            : emptyState("No entry yet: deposit to an account with POST /api/v1/admin/deposits.")),
      panel("Top earning nodes", "lifetime payouts and rewards",
          d.top_nodes.length
            ? h("div", { class: "scroll" }, table(
                [h("th", { class: "num" }, "#"), h("th", {}, "Node"), h("th", { class: "num" }, "Earned"), h("th", { class: "num" }, "Balance")],
                d.top_nodes.map((n, i) => h("tr", { "data-node": n.address },
                  h("td", { class: "num muted" }, i + 1),
                  h("td", {}, h("span", { class: "status-dot" + (n.online ? " on" : ""), title: n.online ? "online" : "offline" }), nodeLink(n.address)),
                  h("td", { class: "num" }, cor(n.earned)), h("td", { class: "num" }, cor(n.balance)))), { id: "top-nodes" }))
            : emptyState("No node has earned anything yet.")),
    );
  }

  // ------------------------------------------------------------------ start

  for (const a of document.querySelectorAll("nav a[data-nav]")) {
    if (a.dataset.nav.split(" ").includes(page)) a.classList.add("active");
  }
  const pages = { overview: overviewPage, node: nodePage, sessions: sessionsPage, tasks: tasksPage, task: taskPage, payments: paymentsPage };
  (pages[page] || overviewPage)();
})();
