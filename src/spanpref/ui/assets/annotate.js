// The annotation page. Runs as js_on_load of a gr.HTML: `element` is the component; `call` posts to the
// AnnotationService calls the app serves (spanpref.ui.common.PageCalls). Data text is only ever put into the page as DOM text (textContent /
// text nodes), never parsed as HTML, so responses, documents and notes cannot inject markup or script.
// Offsets sent to the server are UTF-16 code units (JavaScript string indices); the server converts them.
(() => {
  const root = element.querySelector(".sp-root");
  if (!root || root.dataset.started) return;
  root.dataset.started = "1";
  const OAUTH = root.dataset.oauth === "1";
  const TOKEN_KEY = "spanpref.annotate.token";
  // sg: the AI suggestion the A / E / R keys act on, as {k, id}
  const st = { token: null, info: null, item: null, mode: "dislike", popup: null, busy: false, sg: null };

  // ---- small DOM helper: h("div", {class: "x", text: "y", onclick: f}, child, "text child") -------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") el.textContent = v;
      else if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k === "value") el.value = v;
      else if (k === "checked") el.checked = !!v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return el;
  }

  // The server's calls live under the app's root (a Space, or a local port), whatever page path shows it.
  const callRoot = ((window.gradio_config && window.gradio_config.root) || location.origin).replace(/\/?$/, "/");

  async function call(name, ...args) {
    let r;
    try {
      const res = await fetch(callRoot + "spanpref/call/" + name, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(args),
        credentials: "same-origin",
      });
      r = await res.json();
    } catch (e) {
      throw new Error("could not reach the server (" + (e && e.message ? e.message : e) + "); nothing was saved");
    }
    if (!r || !r.ok) {
      const err = new Error(r && r.error ? r.error : "the server gave no answer");
      err.refused = true;  // the server answered, and said no
      throw err;
    }
    return r;
  }

  // ---- time on the item: counted while the page is visible ------------------------------------------------
  let acc = 0, since = performance.now();
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) acc += (performance.now() - since) / 1000;
    since = performance.now();
  });
  function takeSeconds() {
    const s = acc + (document.hidden ? 0 : (performance.now() - since) / 1000);
    acc = 0;
    since = performance.now();
    return Math.min(Math.round(s * 1000) / 1000, 3600);
  }
  function newKey() {
    return (crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2) + Date.now()).slice(0, 64);
  }

  // ---- shell ----------------------------------------------------------------------------------------------
  const statusEl = h("span", { class: "sp-status", role: "status", "aria-live": "polite" });
  function status(text, kind) {
    statusEl.textContent = text;
    statusEl.className = "sp-status " + (kind || "");
  }
  const whoEl = h("span", { class: "sp-who" });
  const progressEl = h("span", { class: "sp-progress" });
  const likeBtn = h("button", { class: "like", type: "button", title: "Like mode (L)", text: "Like mode",
                                onclick: () => setMode("like") });
  const dislikeBtn = h("button", { class: "dislike", type: "button", title: "Dislike mode (D)", text: "Dislike mode",
                                   onclick: () => setMode("dislike") });
  const logoutBtn = h("button", { type: "button", text: "Log out", onclick: logout });
  const bar = h("div", { class: "sp-bar sp-hidden" }, whoEl, progressEl, h("span", { class: "sp-mode" }, likeBtn, " ", dislikeBtn),
                statusEl, h("span", { class: "sp-grow" }), logoutBtn);

  const nameIn = h("input", { type: "text", name: "name", placeholder: "your name", autocomplete: "username", maxlength: 64 });
  const passIn = h("input", { type: "password", name: "password", placeholder: "password (claims the name the first time)",
                              autocomplete: "current-password", maxlength: 256 });
  const codeIn = h("input", { type: "password", name: "access_code", placeholder: "team access code (if you were given one)",
                              autocomplete: "off", maxlength: 256 });
  const loginErr = h("div", { class: "sp-status err" });
  const loginBtn = h("button", { class: "primary", type: "button", text: OAUTH ? "Continue" : "Log in", onclick: login });
  const loginBox = h("form", { class: "sp-login sp-hidden", onsubmit: (e) => { e.preventDefault(); login(); } },
    OAUTH ? h("div", { text: "Sign in with Hugging Face (button above), then press Continue." })
          : [h("div", { text: "Log in to annotate. Your work is visible only to you." }), nameIn, passIn, codeIn],
    loginBtn, loginErr);

  const queryEl = h("div", { class: "sp-query" });
  const docTitle = h("summary", {});
  const docText = h("div", { class: "sp-doc" });
  const docBox = h("details", { class: "sp-docbox" }, docTitle, docText);
  const cols = h("div", { class: "sp-cols" });
  const choiceName = "sp-choice-" + newKey().slice(0, 8);
  const radios = {};
  const choiceRow = h("div", { class: "sp-choice-row" }, h("strong", { text: "Which response do you prefer? " }),
    ...[["a", "A is better (1)"], ["b", "B is better (2)"], ["tie", "Tie"]].map(([v, label]) => {
      radios[v] = h("input", { type: "radio", name: choiceName, value: v, onchange: onChoice });
      return h("label", {}, radios[v], " " + label);
    }));
  const tieConfirm = h("input", { type: "checkbox", name: "tie_confirm" });
  const tieBox = h("div", { class: "sp-tie-warning sp-hidden" },
    h("div", { text: "Ties should be very rare: use one only when the two responses are truly indistinguishable (or equally poor)." }),
    h("label", {}, tieConfirm, " Yes, they are truly indistinguishable"));
  const rationaleIn = h("textarea", { name: "rationale", rows: 3, placeholder: "Why? (a sentence or two)" });
  const navLabel = h("span", { class: "sp-navlabel" });
  const prevBtn = h("button", { type: "button", text: "◀ Previous (P)", onclick: () => go(-1) });
  const saveBtn = h("button", { type: "button", text: "Save", onclick: () => saveItem(false) });
  const submitBtn = h("button", { class: "primary", type: "button", text: "Save & next ▶", onclick: submitAndNext });
  const nextBtn = h("button", { type: "button", text: "Next (N)", onclick: () => go(1) });
  const choiceBox = h("div", { class: "sp-choice" }, choiceRow, tieBox, rationaleIn,
                      h("div", { class: "sp-buttons" }, prevBtn, saveBtn, submitBtn, nextBtn, navLabel));
  const doneBox = h("div", { class: "sp-done sp-hidden" });
  const main = h("div", { class: "sp-main sp-hidden" }, queryEl, docBox, cols, choiceBox);
  const popup = h("div", { class: "sp-popup sp-hidden", role: "dialog" });
  root.replaceChildren(bar, loginBox, main, doneBox, popup);

  function setMode(mode) {
    st.mode = mode;
    likeBtn.setAttribute("aria-pressed", String(mode === "like"));
    dislikeBtn.setAttribute("aria-pressed", String(mode === "dislike"));
  }
  setMode("dislike");

  function onChoice() {
    tieBox.classList.toggle("sp-hidden", !radios.tie.checked);
  }

  // ---- login ----------------------------------------------------------------------------------------------
  async function start() {
    const saved = localStorage.getItem(TOKEN_KEY);
    for (let attempt = 0; saved && attempt < 5; attempt++) {
      try {
        const r = await call("resume", saved);
        st.token = saved;
        return loggedIn(r);
      } catch (e) {
        console.warn("spanpref: resume failed:", e.message);
        if (e.refused) { localStorage.removeItem(TOKEN_KEY); break; }
        await new Promise((ok) => setTimeout(ok, 500 * (attempt + 1)));  // the server may still be connecting
      }
    }
    loginBox.classList.remove("sp-hidden");
  }

  async function login() {
    loginErr.textContent = "";
    try {
      const r = OAUTH ? await call("login_oauth") : await call("login", nameIn.value, passIn.value, codeIn.value);
      st.token = r.token;
      localStorage.setItem(TOKEN_KEY, r.token);
      passIn.value = "";
      await loggedIn(r);
    } catch (e) {
      loginErr.textContent = e.message;
    }
  }

  async function loggedIn(r) {
    st.info = r;
    whoEl.textContent = r.annotator;
    loginBox.classList.add("sp-hidden");
    bar.classList.remove("sp-hidden");
    showProgress(r.progress);
    await loadItem(null);
  }

  async function logout() {
    try { await call("logout", st.token); } catch (e) { /* the token is dropped here either way */ }
    localStorage.removeItem(TOKEN_KEY);
    st.token = null; st.item = null;
    closePopup();
    for (const el of [bar, main, doneBox]) el.classList.add("sp-hidden");
    loginBox.classList.remove("sp-hidden");
    root.dataset.item = "";
  }

  function showProgress(p) {
    if (p) progressEl.textContent = `${p.done} of ${p.target} done`;
  }

  // ---- items ----------------------------------------------------------------------------------------------
  async function loadItem(index) {
    try {
      const r = await call("get_item", st.token, index);
      showProgress(r.progress);
      closePopup();
      if (!r.item) {
        if (index !== null && st.item) { status("no more items that way", ""); return; }
        st.item = null;
        main.classList.add("sp-hidden");
        doneBox.textContent = "Your queue is finished. Thank you!";
        doneBox.classList.remove("sp-hidden");
        root.dataset.item = "done";
        return;
      }
      st.item = r.item;
      st.sg = null;
      for (const resp of st.item.responses) resp.suggestions = resp.suggestions || [];
      pickSuggestion(0);
      takeSeconds();
      renderItem();
    } catch (e) {
      status(e.message, "err");
    }
  }

  function renderItem() {
    const it = st.item;
    doneBox.classList.add("sp-hidden");
    main.classList.remove("sp-hidden");
    queryEl.textContent = it.query;
    docTitle.textContent = "Source document" + (it.document.title ? ": " + it.document.title : "");
    docText.textContent = it.document.text;
    cols.replaceChildren(...it.responses.map((r, k) => renderResponse(r, k)));
    for (const v of ["a", "b", "tie"]) radios[v].checked = it.choice === v;
    tieConfirm.checked = it.choice === "tie" && it.submitted;
    onChoice();
    rationaleIn.value = it.rationale || "";
    rationaleIn.maxLength = st.info.bounds.rationale;
    navLabel.textContent = `Item ${it.index + 1}` + (it.submitted ? " (submitted)" : "");
    status(it.submitted ? "submitted earlier" : "", "");
    root.dataset.item = it.item_id;
  }

  function reasonLabel(id) {
    const tax = st.info.taxonomy;
    for (const pol of ["like", "dislike"]) {
      for (const g of tax[pol]) for (const r of g.reasons) if (r.id === id) return r.label;
      if (tax.other[pol] === id) return "Other";
    }
    return id;
  }

  function renderResponse(r, k) {
    const box = h("div", { class: "sp-text", dataset: { k: String(k), responseId: r.response_id } });
    box.addEventListener("mouseup", (ev) => setTimeout(() => onPointerUp(k, ev), 0));
    const list = h("ol", { class: "sp-spans" });
    const sgList = h("ol", { class: "sp-sg-list" });
    const sgBox = h("div", { class: "sp-sgbox", dataset: { k: String(k) } },
      h("div", { class: "sp-group-label", text: "AI suggestions (S: next one; A: accept, E: edit, R: reject)" }), sgList);
    const col = h("div", { class: "sp-col", dataset: { k: String(k) } },
      h("h4", { text: "Response " + "AB"[k] }), box, list, sgBox, renderResponseReasons(r, k));
    r._box = box;
    r._list = list;
    r._sgBox = sgBox;
    r._sgList = sgList;
    paintText(k);
    return col;
  }

  function renderResponseReasons(r, k) {
    const tax = st.info.taxonomy;
    const ticked = new Set(r.reasons.map((x) => x.reason));
    const noteOf = (pol) => (r.reasons.find((x) => x.reason === tax.other[pol]) || {}).note || "";
    const groups = [];
    for (const [pol, word] of [["like", "Liked"], ["dislike", "Disliked"]]) {
      for (const g of tax[pol]) {
        groups.push(h("div", { class: "sp-group" }, h("div", { class: "sp-group-label", text: `${word}: ${g.label}` }),
          g.reasons.map((x) => h("label", { class: "sp-reason" },
            h("input", { type: "checkbox", value: x.id, checked: ticked.has(x.id), dataset: { whole: String(k) } }), " " + x.label))));
      }
      groups.push(h("label", { class: "sp-reason" }, `Other things I ${word.toLowerCase()} about response ${"AB"[k]}:`,
        h("textarea", { rows: 2, maxlength: st.info.bounds.note, dataset: { other: pol, whole: String(k) }, value: noteOf(pol) })));
    }
    return h("details", { class: "sp-reasons" }, h("summary", { text: `Reasons about response ${"AB"[k]} as a whole` }), groups);
  }

  // Draw the response text with its spans: the text is cut at every span boundary and each piece that lies
  // under one or more spans becomes a <mark> listing them, so overlapping spans show as layered highlights.
  function paintText(k) {
    const r = st.item.responses[k];
    const text = r.text;
    const cuts = new Set([0, text.length]);
    for (const s of r.spans) { cuts.add(s.start16); cuts.add(s.end16); }
    // AI suggestions not yet accepted or rejected: outlined (dashed) under or over the annotator's own highlights
    const sgs = r.suggestions || [];
    for (const s of sgs) { cuts.add(s.start16); cuts.add(s.end16); }
    const at = [...cuts].sort((x, y) => x - y);
    const nodes = [];
    const current = st.popup && st.popup.k === k && st.popup.span.span_id;
    for (let i = 0; i + 1 < at.length; i++) {
      const a = at[i], b = at[i + 1];
      const piece = text.slice(a, b);
      const cover = r.spans.filter((s) => s.start16 <= a && s.end16 >= b);
      const sgCover = sgs.filter((s) => s.start16 <= a && s.end16 >= b);
      let node = document.createTextNode(piece);
      if (sgCover.length) {
        const pols = new Set(sgCover.map((s) => s.polarity));
        const cur = st.sg && st.sg.k === k && sgCover.some((s) => s.id === st.sg.id);
        node = h("span", { class: "sp-sg sg-" + (pols.size > 1 ? "both" : sgCover[0].polarity) + (cur ? " sg-current" : ""),
                           dataset: { sg: sgCover.map((s) => s.id).join(",") },
                           title: sgCover.map((s) => `${s.source} suggests ${s.polarity}`).join("; ") }, node);
      }
      if (!cover.length) { nodes.push(node); continue; }
      const likes = cover.filter((s) => s.polarity === "like").length;
      const cls = [likes && likes < cover.length ? "both" : likes ? "like" : "dislike"];
      if (cover.length > 1 && !cls.includes("both")) cls.push("deep");
      if (current && cover.some((s) => s.span_id === current)) cls.push("current");
      const starting = cover.filter((s) => s.start16 === a).map((s) => s.span_id);
      nodes.push(h("mark", { class: cls.join(" "), dataset: { ids: cover.map((s) => s.span_id).join(",") },
                             "data-label": starting.length ? starting.join(",") : null }, node));
    }
    r._box.replaceChildren(...nodes);
    paintSuggestions(k);
    r._list.replaceChildren(...r.spans.map((s) => h("li", { class: s.polarity, dataset: { spanId: String(s.span_id) },
      onclick: () => openPopup({ k, span: { ...s }, isNew: false }, r._box.getBoundingClientRect()) },
      `#${s.span_id} ${s.polarity} “${s.text}” `, h("span", { text: s.reasons.map(reasonLabel).join("; ") + (s.note ? " — " + s.note : "") }),
      s.fix ? h("span", { class: "sp-fix-shown", text: " → “" + s.fix + "”" }) : null,
      s.source ? h("span", { class: "sp-src", text: " (suggested by " + s.source + ")" }) : null)));
  }

  // ---- AI suggestions -------------------------------------------------------------------------------------
  function paintSuggestions(k) {
    const r = st.item.responses[k];
    const sgs = r.suggestions || [];
    const rows = sgs.map((s) => {
      const cur = st.sg && st.sg.k === k && st.sg.id === s.id;
      return h("li", { class: "sp-sg-item " + s.polarity + (cur ? " current" : ""), dataset: { sg: s.id },
                       onclick: (e) => { if (e.target.tagName !== "BUTTON") { st.sg = { k, id: s.id }; showCurrentSuggestion(); } } },
        h("span", { class: "sp-sg-who", text: s.source }), ` suggests ${s.polarity} “${s.text}” `,
        h("span", { text: s.reasons.map(reasonLabel).join("; ") + (s.note ? " — " + s.note : "") }), " ",
        h("button", { type: "button", class: "sp-sg-accept", text: "Accept", title: "Make it your span (A)",
                      onclick: () => acceptSuggestion(k, s.id) }),
        h("button", { type: "button", class: "sp-sg-edit", text: "Edit", title: "Change it, then save it as yours (E)",
                      onclick: () => editSuggestion(k, s.id) }),
        h("button", { type: "button", class: "sp-sg-reject", text: "Reject", title: "Hide it (R)",
                      onclick: () => rejectSuggestion(k, s.id) }));
    });
    const hidden = r.rejected_suggestions || 0;
    if (hidden) rows.push(h("li", { class: "sp-sg-restore" }, h("button", { type: "button",
      text: `Show the ${hidden} rejected suggestion${hidden > 1 ? "s" : ""} again`, onclick: () => restoreSuggestions(k) })));
    r._sgList.replaceChildren(...rows);
    r._sgBox.classList.toggle("sp-hidden", !rows.length);
  }

  // the pending suggestions of both responses in page order, as [k, id]
  function pendingSuggestions() {
    return st.item ? st.item.responses.flatMap((r, k) => (r.suggestions || []).map((s) => [k, s.id])) : [];
  }

  // Make the suggestion `step` places after the current one current (0: keep it, or the one now in its place).
  function pickSuggestion(step, from) {
    const all = pendingSuggestions();
    if (!all.length) { st.sg = null; return; }
    let i = from !== undefined ? from : all.findIndex(([k, id]) => st.sg && st.sg.k === k && st.sg.id === id);
    if (i < 0) i = 0;
    i = ((i + step) % all.length + all.length) % all.length;
    st.sg = { k: all[i][0], id: all[i][1] };
  }

  function currentSuggestion() {
    if (!st.item || !st.sg) return null;
    const r = st.item.responses[st.sg.k];
    const s = (r.suggestions || []).find((x) => x.id === st.sg.id);
    return s ? [st.sg.k, s] : null;
  }

  // Take suggestion `id` off response k's pending list and make the one after it current.
  function settleSuggestion(k, id) {
    const r = st.item.responses[k];
    const at = pendingSuggestions().findIndex(([kk, x]) => kk === k && x === id);
    r.suggestions = (r.suggestions || []).filter((x) => x.id !== id);
    pickSuggestion(0, Math.max(0, Math.min(at, pendingSuggestions().length - 1)));
    showCurrentSuggestion();
  }

  function showCurrentSuggestion() {
    for (let k = 0; k < st.item.responses.length; k++) paintText(k);
    const li = st.sg && root.querySelector(`.sp-sg-item[data-sg="${st.sg.id}"]`);
    if (li) li.scrollIntoView({ block: "nearest" });
  }

  function addSpan(r, span) {
    const i = r.spans.findIndex((x) => x.span_id === span.span_id);
    if (i >= 0) r.spans[i] = span; else r.spans.push(span);
    r.spans.sort((x, y) => x.start - y.start || x.span_id - y.span_id);
  }

  // An accepted suggestion takes the AI's note only where its 'Other' reason needs one to say why.
  function suggestedNote(s) {
    return s.reasons.includes(st.info.taxonomy.other[s.polarity]) ? s.note : "";
  }

  async function acceptSuggestion(k, id) {
    const r = st.item && st.item.responses[k];
    const s = r && (r.suggestions || []).find((x) => x.id === id);
    if (!s || st.busy) return;
    st.busy = true;
    status("saving…", "busy");
    try {
      // the suggestion's id is the span's key: the server knows the span came from it, and a retry saves it once
      const res = await call("save_span", st.token, st.item.item_id, r.response_id,
        { span_id: null, key: s.id, start: s.start16, end: s.end16, polarity: s.polarity, reasons: s.reasons, note: suggestedNote(s),
          fix: "" }, takeSeconds());
      addSpan(r, { ...res.span, source: s.source, suggested: s });
      settleSuggestion(k, id);
      status(`Accepted ✓ (span #${res.span.span_id})`, "ok");
    } catch (e) {
      status(e.message, "err");
    } finally {
      st.busy = false;
    }
  }

  function editSuggestion(k, id) {
    const r = st.item && st.item.responses[k];
    const s = r && (r.suggestions || []).find((x) => x.id === id);
    if (!s) return;
    st.sg = { k, id };
    const li = root.querySelector(`.sp-sg-item[data-sg="${id}"]`);
    openPopup({ k, isNew: true, suggested: s, span: { start16: s.start16, end16: s.end16, polarity: s.polarity, reasons: [...s.reasons],
                                                      note: suggestedNote(s), fix: "", key: s.id, text: s.text, source: s.source } },
              (li || r._box).getBoundingClientRect());
  }

  async function rejectSuggestion(k, id) {
    const r = st.item && st.item.responses[k];
    if (!r || st.busy) return;
    st.busy = true;
    status("saving…", "busy");
    try {
      await call("reject_suggestion", st.token, st.item.item_id, r.response_id, id);
      r.rejected_suggestions = (r.rejected_suggestions || 0) + 1;
      settleSuggestion(k, id);
      status("Rejected the suggestion ✓", "ok");
    } catch (e) {
      status(e.message, "err");
    } finally {
      st.busy = false;
    }
  }

  async function restoreSuggestions(k) {
    const r = st.item && st.item.responses[k];
    if (!r || st.busy) return;
    try {
      await call("restore_suggestions", st.token, st.item.item_id, r.response_id);
    } catch (e) {
      status(e.message, "err");
      return;
    }
    // the answers typed on the page are saved first: the item is drawn again from the server
    if (await saveItem(false)) await loadItem(st.item.index);
  }

  function offsetWithin(box, node, offset) {
    const range = document.createRange();
    range.setStart(box, 0);
    range.setEnd(node, offset);
    return range.toString().length;
  }

  function onPointerUp(k, ev) {
    if (!st.item) return;
    const r = st.item.responses[k];
    const box = r._box;
    const sel = window.getSelection();
    if (sel.rangeCount && !sel.isCollapsed) {
      const range = sel.getRangeAt(0);
      if (!box.contains(range.startContainer) || !box.contains(range.endContainer)) {
        status("select text inside one response", "err");
        return;
      }
      let a = offsetWithin(box, range.startContainer, range.startOffset);
      let b = offsetWithin(box, range.endContainer, range.endOffset);
      // leave out white space at the edges (drags often catch a neighbouring space or line break)
      while (a < b && /\s/.test(r.text[a])) a++;
      while (b > a && /\s/.test(r.text[b - 1])) b--;
      if (a >= b) return;
      const rect = range.getBoundingClientRect();
      sel.removeAllRanges();
      openPopup({ k, isNew: true, span: { start16: a, end16: b, polarity: st.mode, reasons: [], note: "", fix: "", key: newKey(),
                                          text: r.text.slice(a, b) } }, rect);
      return;
    }
    const mark = ev.target && ev.target.closest ? ev.target.closest("mark") : null;
    if (mark && box.contains(mark)) {
      const ids = mark.dataset.ids.split(",").map(Number);
      const spans = r.spans.filter((s) => ids.includes(s.span_id)).sort((x, y) => (x.end16 - x.start16) - (y.end16 - y.start16));
      if (spans.length) openPopup({ k, isNew: false, span: { ...spans[0] }, others: spans.slice(1) }, mark.getBoundingClientRect());
      return;
    }
    const sg = ev.target && ev.target.closest ? ev.target.closest(".sp-sg") : null;
    if (sg && box.contains(sg)) {
      st.sg = { k, id: sg.dataset.sg.split(",")[0] };
      showCurrentSuggestion();
    }
  }

  // ---- the span popup -------------------------------------------------------------------------------------
  function openPopup(ctx, rect) {
    st.popup = ctx;
    drawPopup();
    popup.classList.remove("sp-hidden");
    // Never cover what was selected: go below it, or above it when there is more room there, and shrink (the
    // popup scrolls) to the room on that side.
    const below = window.innerHeight - rect.bottom - 16, above = rect.top - 16;
    const room = Math.max(below, above, 120);
    popup.style.maxHeight = Math.min(room, window.innerHeight * 0.7) + "px";
    const w = popup.offsetWidth || 540, hgt = popup.offsetHeight;
    const top = hgt <= below || below >= above ? rect.bottom + 8 : Math.max(8, rect.top - hgt - 8);
    popup.style.top = top + "px";
    popup.style.left = Math.max(8, Math.min(rect.left, window.innerWidth - w - 8)) + "px";
    paintText(ctx.k);
    const first = popup.querySelector("input[type=checkbox]");
    if (first) first.focus({ preventScroll: true });
  }

  function drawPopup() {
    const ctx = st.popup, s = ctx.span, tax = st.info.taxonomy;
    const pol = s.polarity;
    const ticked = new Set(s.reasons);
    popup.className = "sp-popup " + pol;
    const polSwitch = ["like", "dislike"].map((p) => h("label", {},
      h("input", { type: "radio", name: "sp-pop-pol", value: p, checked: p === pol,
                   onchange: () => { Object.assign(s, gatherPopup()); s.polarity = p; drawPopup(); } }), " " + p + " "));
    const groups = h("div", { class: "sp-groups" }, tax[pol].map((g) => h("div", { class: "sp-group" }, h("div", { class: "sp-group-label", text: g.label }),
      g.reasons.map((x) => h("label", { class: "sp-reason" }, h("input", { type: "checkbox", value: x.id, checked: ticked.has(x.id) }), " " + x.label)))));
    const other = tax.other[pol];
    const note = h("textarea", { rows: 2, name: "note", maxlength: st.info.bounds.note, placeholder: "Other: say why (optional otherwise)", value: s.note || "" });
    // A dislike may carry the annotator's own wording for it; chains can then be built from these fixes.
    const fix = pol === "dislike" ? h("label", { class: "sp-fix" }, "Suggested fix (optional): what you would write instead",
      h("textarea", { rows: 2, name: "fix", maxlength: st.info.bounds.fix, placeholder: "leave empty if you have none; a single space deletes the span's text",
                      value: s.fix || "" })) : null;
    const parts = [
      h("div", { class: "sp-group-label", text: ctx.suggested ? `Suggestion from ${s.source}: save it as your ${pol} span`
                                                : (ctx.isNew ? "New " : "Edit ") + pol + " span" + (s.span_id ? " #" + s.span_id : "") }),
      s.source && !ctx.suggested ? h("div", { class: "sp-src", text: "suggested by " + s.source }) : null,
      h("div", { class: "sp-quote", text: "“" + s.text + "”" }),
      h("div", {}, polSwitch),
      groups,
      other ? h("label", { class: "sp-reason" }, h("input", { type: "checkbox", value: other, checked: ticked.has(other) }), " Other (say why)") : null,
      note,
      fix,
      (ctx.others || []).length ? h("div", {}, "Also here: ", ctx.others.map((o) => h("button", { type: "button", text: `#${o.span_id} ${o.polarity}`,
        onclick: () => openPopup({ k: ctx.k, isNew: false, span: { ...o }, others: [] }, popup.getBoundingClientRect()) }))) : null,
      h("div", { class: "sp-buttons" },
        h("button", { class: "primary", type: "button", text: "Save (Enter)", onclick: savePopup }),
        ctx.isNew ? null : h("button", { type: "button", text: "Delete", onclick: deleteSpan }),
        h("button", { type: "button", text: "Cancel (Esc)", onclick: closePopup }))];
    popup.replaceChildren(...parts.flat().filter(Boolean));
  }

  function gatherPopup() {
    const reasons = [...popup.querySelectorAll("input[type=checkbox]:checked")].map((x) => x.value);
    const noteEl = popup.querySelector("textarea[name=note]"), fixEl = popup.querySelector("textarea[name=fix]");
    return { reasons, note: noteEl ? noteEl.value : "", fix: fixEl ? fixEl.value : "" };
  }

  function closePopup() {
    const ctx = st.popup;
    st.popup = null;
    popup.classList.add("sp-hidden");
    if (ctx && st.item) paintText(ctx.k);
  }

  async function savePopup() {
    const ctx = st.popup;
    if (!ctx || st.busy) return;
    const { reasons, note, fix } = gatherPopup();
    const s = ctx.span, r = st.item.responses[ctx.k];
    st.busy = true;
    status("saving…", "busy");
    try {
      const res = await call("save_span", st.token, st.item.item_id, r.response_id,
        { span_id: s.span_id || null, key: s.key || null, start: s.start16, end: s.end16, polarity: s.polarity, reasons, note, fix },
        takeSeconds());
      addSpan(r, { ...res.span, source: s.source || "", suggested: ctx.suggested || s.suggested || null });
      st.popup = null;
      popup.classList.add("sp-hidden");
      if (ctx.suggested) settleSuggestion(ctx.k, ctx.suggested.id); else paintText(ctx.k);
      status(`Saved ✓ (span #${res.span.span_id})`, "ok");
    } catch (e) {
      status(e.message, "err");
    } finally {
      st.busy = false;
    }
  }

  async function deleteSpan() {
    const ctx = st.popup;
    if (!ctx || ctx.isNew || st.busy) return;
    const r = st.item.responses[ctx.k];
    st.busy = true;
    status("deleting…", "busy");
    try {
      await call("delete_span", st.token, st.item.item_id, r.response_id, ctx.span.span_id);
      r.spans = r.spans.filter((x) => x.span_id !== ctx.span.span_id);
      const back = ctx.span.suggested;  // a deleted accepted suggestion is offered again, as the server does
      if (back && !r.suggestions.some((x) => x.id === back.id)) {
        r.suggestions.push(back);
        r.suggestions.sort((x, y) => x.start - y.start || x.end - y.end);
      }
      st.popup = null;
      popup.classList.add("sp-hidden");
      paintText(ctx.k);
      status(`Deleted span #${ctx.span.span_id} ✓`, "ok");
    } catch (e) {
      status(e.message, "err");
    } finally {
      st.busy = false;
    }
  }

  // ---- item-level answers ---------------------------------------------------------------------------------
  function gatherItem(submit) {
    const responses = st.item.responses.map((r, k) => {
      const out = { reasons: [], other_like: "", other_dislike: "" };
      for (const el of cols.querySelectorAll(`[data-whole="${k}"]`)) {
        if (el.tagName === "TEXTAREA") out["other_" + el.dataset.other] = el.value;
        else if (el.checked) out.reasons.push(el.value);
      }
      return out;
    });
    const choice = ["a", "b", "tie"].find((v) => radios[v].checked) || null;
    return { responses, choice, rationale: rationaleIn.value, tie: tieConfirm.checked ? "confirmed" : "", submit };
  }

  async function saveItem(submit) {
    if (!st.item || st.busy) return false;
    st.busy = true;
    status("saving…", "busy");
    try {
      const res = await call("save_item", st.token, st.item.item_id, gatherItem(submit), takeSeconds());
      showProgress(res.progress);
      if (submit) st.item.submitted = true;
      status(submit ? "Submitted ✓" : "Saved ✓", "ok");
      return true;
    } catch (e) {
      status(e.message, "err");
      return false;
    } finally {
      st.busy = false;
    }
  }

  async function submitAndNext() {
    if (await saveItem(true)) await loadItem(null);
  }

  async function go(step) {
    if (!st.item) return;
    const target = st.item.index + step;
    if (target < 0) return;
    if (await saveItem(false)) await loadItem(target);
  }

  document.addEventListener("keydown", (e) => {
    if (!root.isConnected || !st.item) return;
    const tag = (e.target && e.target.tagName || "").toLowerCase();
    const typing = tag === "textarea" || (tag === "input" && ["text", "password"].includes(e.target.type));
    if (e.key === "Escape" && st.popup) { e.preventDefault(); closePopup(); return; }
    if (e.key === "Enter" && st.popup && (tag !== "textarea" || e.ctrlKey || e.metaKey)) { e.preventDefault(); savePopup(); return; }
    if (typing || e.ctrlKey || e.metaKey || e.altKey || st.popup) return;
    const key = e.key.toLowerCase();
    if (key === "l") setMode("like");
    else if (key === "d") setMode("dislike");
    else if (key === "1") { radios.a.checked = true; onChoice(); }
    else if (key === "2") { radios.b.checked = true; onChoice(); }
    else if (key === "n") go(1);
    else if (key === "p") go(-1);
    else if (key === "s") { pickSuggestion(e.shiftKey ? -1 : 1); showCurrentSuggestion(); }
    else if (key === "a" || key === "e" || key === "r") {
      const cur = currentSuggestion();
      if (!cur) return;
      ({ a: acceptSuggestion, e: editSuggestion, r: rejectSuggestion })[key](cur[0], cur[1].id);
    }
    else return;
    e.preventDefault();
  });

  start();
})();
