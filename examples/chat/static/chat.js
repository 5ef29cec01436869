// The chat page, on flask_realtime's JavaScript client (/realtime/client.js).
//
// Channels it uses (see examples/chat/app.py and docs/chat-example.md):
//   chat.room.N        public: every room, for messages and unread counts
//   presence-room.N    presence: the room on screen, for members and typing
//   private-chat.A-B   private: the open direct-message conversation
// plus the direct event "notification.new" (send_to_user) for toasts.
//
// All user text goes into the page through textContent, never innerHTML.
"use strict";

(function () {
  const page = JSON.parse(document.getElementById("page-data").textContent);
  const me = page.me;
  const rooms = new Map(page.rooms.map((room) => [room.number, room]));

  const $ = (id) => document.getElementById(id);
  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  };

  // ?transport=sse (or websocket, longpolling; several comma-separated) picks
  // the transports to try; the default tries all three in turn.
  const options = {};
  const wanted = new URLSearchParams(location.search).get("transport");
  if (wanted) {
    const known = ["websocket", "sse", "longpolling"];
    const list = wanted.split(",").filter((name) => known.includes(name));
    if (list.length) options.transports = list;
  }
  const client = new RealtimeClient(location.origin, options);
  window.chatClient = client; // for the console and for examples/chat/smoke.py

  // -- small helpers ----------------------------------------------------------

  function initials(name) {
    const words = String(name).trim().split(/\s+/).filter(Boolean);
    if (!words.length) return "?";
    const first = [...words[0]][0];
    return (words.length > 1 ? first + [...words[words.length - 1]][0] : first).toUpperCase();
  }

  function hue(userId) {
    let hash = 0;
    for (const ch of String(userId)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    return hash % 360;
  }

  function avatar(userId, name, small) {
    const node = el("span", small ? "avatar avatar-small" : "avatar", initials(name));
    node.style.setProperty("--hue", hue(userId));
    node.setAttribute("aria-hidden", "true");
    return node;
  }

  function paintAvatar(node, userId, name) {
    node.textContent = initials(name);
    node.style.setProperty("--hue", hue(userId));
  }

  const clock = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
  const full = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

  function dmChannelName(a, b) {
    const [first, second] = [String(a), String(b)].sort();
    return `private-chat.${first}-${second}`;
  }

  function nearBottom(list) {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  }

  // -- messages ----------------------------------------------------------------

  /** The text, with @mentions highlighted; built from text nodes only. */
  function messageText(text) {
    const fragment = document.createDocumentFragment();
    for (const part of String(text).split(/(@[A-Za-z0-9_]+)/)) {
      if (!part) continue;
      if (/^@[A-Za-z0-9_]+$/.test(part)) {
        const mine = part.slice(1).toLowerCase() === String(me.user_id);
        fragment.append(el("span", mine ? "mention me" : "mention", part));
      } else {
        fragment.append(document.createTextNode(part));
      }
    }
    return fragment;
  }

  function mentionsMe(text) {
    return (String(text).match(/@[A-Za-z0-9_]+/g) || []).some(
      (m) => m.slice(1).toLowerCase() === String(me.user_id)
    );
  }

  function messageItem(message, previous, instant) {
    const mine = String(message.user_id) === String(me.user_id);
    const continued =
      previous && previous.user_id === message.user_id && message.time - previous.time < 300;
    const item = el("li", "msg");
    item.classList.toggle("mine", mine);
    item.classList.toggle("cont", Boolean(continued));
    item.classList.toggle("mentions-me", !mine && mentionsMe(message.text));
    if (instant) item.style.animation = "none";
    item.dataset.id = message.id;
    item.dataset.user = message.user_id;

    const body = el("div", "body");
    const meta = el("div", "meta");
    meta.append(el("span", "name", mine ? "You" : message.name));
    const when = new Date(message.time * 1000);
    const time = el("time", "", clock.format(when));
    time.dateTime = when.toISOString();
    time.title = full.format(when);
    meta.append(time);
    const bubble = el("div", "bubble");
    bubble.append(messageText(message.text));
    bubble.title = clock.format(when);
    body.append(meta, bubble);
    if (mine) {
      // A message from the server is sent; one being sent says so (Thread.sending).
      item.dataset.status = "sent";
      body.append(el("div", "delivery", "Sent"));
    }
    item.append(avatar(message.user_id, message.name), body);
    return item;
  }

  /**
   * Post `text` on `channel` (a client event, handled by send_to_room() or
   * send_direct() in app.py) and show it in `thread` at once, "Sending…",
   * until the server answers: its answer (the handler's return value, the
   * stored message) replaces it as "Sent"; a refusal marks it "Not sent"
   * (and the channel's error listener shows why).
   */
  function postMessage(channel, thread, text) {
    const item = thread.sending(text);
    channel.send("message.send", { text }).then(
      (message) => thread.sent(item, message),
      () => thread.failed(item),
    );
  }

  /**
   * A conversation on screen: its messages by id (ids come from one server
   * counter, so they also give the order), drawn into one list element.
   */
  class Thread {
    constructor(list) {
      this.list = list;
      this.messages = new Map();
      this.last = null;
      this.drafts = []; // items "Sending…", oldest first
    }

    add(message) {
      if (this.messages.has(message.id)) return false;
      this.messages.set(message.id, message);
      // Our own message's broadcast may come before the server's answer to
      // send(): it takes the place of its draft, so it never shows twice.
      if (String(message.user_id) === String(me.user_id)) {
        const draft = this.drafts.find((item) => item._text === message.text);
        if (draft) this.forget(draft).remove();
      }
      if (this.last && message.id < this.last.id) {
        this.redraw(); // history arriving after a live message
      } else {
        const stick = nearBottom(this.list) || String(message.user_id) === String(me.user_id);
        this.list.append(messageItem(message, this.last, false));
        this.last = message;
        if (stick) this.list.scrollTop = this.list.scrollHeight;
      }
      return true;
    }

    merge(messages) {
      let added = false;
      for (const message of messages) {
        if (!this.messages.has(message.id)) {
          this.messages.set(message.id, message);
          added = true;
        }
      }
      if (added) this.redraw();
    }

    redraw() {
      const sorted = [...this.messages.values()].sort((a, b) => a.id - b.id);
      const items = [];
      let previous = null;
      for (const message of sorted) {
        items.push(messageItem(message, previous, true));
        previous = message;
      }
      // Drafts stay at the end, where they were.
      this.list.replaceChildren(...items, ...this.drafts);
      this.last = previous;
      this.list.scrollTop = this.list.scrollHeight;
    }

    /** A message of ours on its way: drawn now, "Sending…", not yet one of `messages`. */
    sending(text) {
      const draft = { id: "", user_id: me.user_id, name: me.name, text, time: Date.now() / 1000 };
      const item = messageItem(draft, this.last, false);
      item.dataset.status = "sending";
      item.querySelector(".delivery").textContent = "Sending…";
      item._text = text.trim(); // as the server stores it (clean_text in app.py)
      this.drafts.push(item);
      this.list.append(item);
      this.list.scrollTop = this.list.scrollHeight;
      return item;
    }

    /** The server has it: the draft gives way to the message (unless its broadcast came first). */
    sent(item, message) {
      this.forget(item).remove();
      if (message && message.id !== undefined) this.add(message);
    }

    failed(item) {
      this.forget(item);
      item.dataset.status = "failed";
      item.querySelector(".delivery").textContent = "Not sent";
    }

    /** `item` is no longer a draft (it is sent, or failed); returns it. */
    forget(item) {
      this.drafts = this.drafts.filter((draft) => draft !== item);
      return item;
    }

    system(text) {
      const stick = nearBottom(this.list);
      this.list.append(el("li", "system", text));
      this.last = null; // the next message starts a new group
      if (stick) this.list.scrollTop = this.list.scrollHeight;
    }
  }

  async function fetchJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) {
      location.href = "/login";
      throw new Error("signed out");
    }
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response.json();
  }

  // -- toasts -------------------------------------------------------------------

  function toast(kind, title, text, onClick) {
    const item = el(onClick ? "button" : "div", `toast ${kind}`);
    if (onClick) item.type = "button";
    item.setAttribute("role", kind === "error" ? "alert" : "status");
    const icon = { dm: "✉", mention: "@", error: "!" }[kind] || "i";
    const words = el("div", "toast-words");
    words.append(el("div", "toast-title", title));
    if (text) words.append(el("div", "toast-text", text));
    item.append(el("span", "toast-icon", icon), words);
    const dismiss = () => {
      item.classList.add("leaving");
      setTimeout(() => item.remove(), 260);
    };
    item.addEventListener("click", () => {
      if (onClick) onClick();
      dismiss();
    });
    $("toasts").prepend(item);
    while ($("toasts").children.length > 4) $("toasts").lastElementChild.remove();
    setTimeout(dismiss, kind === "error" ? 5000 : 8000);
  }

  function showError(error) {
    if (!error || !error.code) return;
    const text =
      error.code === 429
        ? `Slow down a little: try again in ${Math.ceil(error.retry_after || 1)} s.`
        : error.message || `error ${error.code}`;
    toast("error", error.code === 429 ? "Too many messages" : "Not sent", text);
  }

  // -- typing indicators --------------------------------------------------------

  /** Who is typing where: user id -> timer, cleared after a few quiet seconds. */
  class Typing {
    constructor(line, nameOf) {
      this.line = line;
      this.nameOf = nameOf;
      this.timers = new Map();
    }

    saw(userId) {
      if (String(userId) === String(me.user_id) || !this.nameOf(userId)) return;
      clearTimeout(this.timers.get(String(userId)));
      this.timers.set(String(userId), setTimeout(() => this.stop(userId), 4000));
      this.render();
    }

    stop(userId) {
      clearTimeout(this.timers.get(String(userId)));
      if (this.timers.delete(String(userId))) this.render();
    }

    clear() {
      for (const timer of this.timers.values()) clearTimeout(timer);
      this.timers.clear();
      this.render();
    }

    has(userId) {
      return this.timers.has(String(userId));
    }

    render() {
      const names = [...this.timers.keys()].map((id) => this.nameOf(id)).filter(Boolean);
      let text = "";
      if (names.length === 1) text = `${names[0]} is typing…`;
      else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
      else if (names.length > 2) text = "Several people are typing…";
      this.line.textContent = text;
      if (this === roomTyping) renderMembers();
    }
  }

  /** Sends "client-typing" at most every 2.5 s while the user types (rate limit: 60/min). */
  function typingSender(channelOf) {
    let last = 0;
    let lastChannel = null;
    const sender = (input) => {
      const channel = channelOf();
      const now = Date.now();
      if (!channel || channel.state !== "subscribed" || !input.value.trim()) return;
      if (channel === lastChannel && now - last < 2500) return;
      last = now;
      lastChannel = channel;
      channel.send("client-typing", { user_id: me.user_id });
    };
    sender.reset = () => (lastChannel = null); // a sent message ends the burst
    return sender;
  }

  // -- rooms -------------------------------------------------------------------

  const roomChannels = new Map(); // number -> public channel, all subscribed
  const recoveries = []; // each room's subscribe replies, for the tests and the console
  window.chatRecoveries = recoveries;
  const threads = new Map(); // number -> Thread (one list element shown at a time)
  const unread = new Map();
  const names = new Map(); // user id -> name, of every member seen
  let current = null; // the room number on screen
  let presence = null; // its presence channel

  const roomTyping = new Typing($("typing"), (userId) => memberName(userId));

  function memberName(userId) {
    const members = presence && presence.members ? presence.members : [];
    const member = members.find((m) => String(m.user_id) === String(userId));
    return member ? (member.user_info && member.user_info.name) || String(member.user_id) : null;
  }

  for (const room of rooms.values()) {
    const list = el("ol", "messages");
    list.dataset.empty = `No messages in #${room.name} yet. Say hello!`;
    list.setAttribute("aria-live", "polite");
    threads.set(room.number, new Thread(list));

    const channel = client.subscribe(`chat.room.${room.number}`);
    roomChannels.set(room.number, channel);
    channel.on("message.sent", (message) => {
      const added = threads.get(room.number).add(message);
      if (room.number === current) {
        roomTyping.stop(message.user_id);
      } else if (added && String(message.user_id) !== String(me.user_id)) {
        unread.set(room.number, (unread.get(room.number) || 0) + 1);
        renderRooms();
      }
    });
    // After a reconnect the client resubscribes from the last message it
    // had, and the server replays what was said meanwhile (the room's
    // history): those arrive as message.sent above. When the history cannot
    // fill the gap (recovered false: a restart on the null broker, a long
    // absence), load the room again (a room not on screen loads when it is opened).
    channel.on("subscribed", ({ recovered, resubscribed }) => {
      recoveries.push({ room: room.number, recovered, resubscribed });
      if (!recovered && room.number === current) loadHistory(room.number);
    });
    channel.on("error", showError);
  }

  async function loadHistory(number) {
    try {
      const body = await fetchJSON(`/rooms/${number}/messages`);
      threads.get(number).merge(body.messages);
    } catch (err) {
      console.warn(err);
    }
  }

  function renderRooms() {
    const items = [];
    for (const room of rooms.values()) {
      const button = el("button");
      button.type = "button";
      button.dataset.room = room.number;
      button.setAttribute("aria-current", String(room.number === current));
      const count = unread.get(room.number) || 0;
      const label = el("span", count ? "label unread" : "label", room.name);
      button.append(el("span", "hash", "#"), label);
      if (count) button.append(el("span", "badge", String(count)));
      button.addEventListener("click", () => openRoom(room.number));
      const item = el("li");
      item.append(button);
      items.push(item);
    }
    $("rooms").replaceChildren(...items);
  }

  function renderMembers() {
    const members = presence && presence.members ? presence.members.slice() : [];
    members.sort((a, b) => {
      if (String(a.user_id) === String(me.user_id)) return -1;
      if (String(b.user_id) === String(me.user_id)) return 1;
      return String(a.user_info && a.user_info.name).localeCompare(String(b.user_info && b.user_info.name));
    });
    const items = members.map((member) => {
      const name = (member.user_info && member.user_info.name) || String(member.user_id);
      names.set(String(member.user_id), name);
      const isMe = String(member.user_id) === String(me.user_id);
      const button = el("button");
      button.type = "button";
      button.dataset.user = member.user_id;
      button.disabled = isMe;
      button.title = isMe ? "You" : `Message ${name} privately`;
      const who = el("div", "who");
      const nameLine = el("div", "who-name", name);
      if (isMe) nameLine.append(el("span", "you", " (you)"));
      const typing = roomTyping.has(member.user_id);
      who.append(nameLine, el("div", "who-id", typing ? "typing…" : `@${member.user_id}`));
      button.append(avatar(member.user_id, name, true), who);
      if (!isMe) button.addEventListener("click", () => openDm({ user_id: member.user_id, name }));
      const item = el("li", typing ? "is-typing" : "");
      item.append(button);
      return item;
    });
    $("members").replaceChildren(...items);
    $("member-count").textContent = String(members.length);
    $("member-count-button").textContent = String(members.length);
    if (current !== null) {
      const here = members.length === 1 ? "1 person here" : `${members.length} people here`;
      $("room-sub").textContent = `${rooms.get(current).topic} · ${here}`;
    }
  }

  function openRoom(number) {
    $("app").classList.remove("show-sidebar");
    if (number === current || !rooms.has(number)) return;
    if (presence) {
      presence.off();
      presence.unsubscribe(); // the others see us leave
    }
    roomTyping.clear();
    current = number;
    unread.set(number, 0);
    const room = rooms.get(number);
    history.replaceState(null, "", `${location.search}#${room.name}`);
    document.title = `#${room.name} · realtime chat`;
    $("room-name").textContent = `# ${room.name}`;
    $("message-input").placeholder = `Message #${room.name}`;
    $("messages").replaceWith(threads.get(number).list);
    threads.get(number).list.id = "messages";
    for (const thread of threads.values()) if (thread !== threads.get(number)) thread.list.removeAttribute("id");
    threads.get(number).list.scrollTop = threads.get(number).list.scrollHeight;

    presence = client.subscribe(`presence-room.${number}`);
    presence.on("subscribed", renderMembers);
    presence.on("presence.join", (data) => {
      renderMembers();
      threads.get(number).system(`${(data.user_info && data.user_info.name) || data.user_id} joined`);
    });
    presence.on("presence.leave", (data) => {
      // The client has already removed the member: the name comes from our cache.
      roomTyping.stop(data.user_id);
      renderMembers();
      threads.get(number).system(`${names.get(String(data.user_id)) || `@${data.user_id}`} left`);
    });
    presence.on("client-typing", (data) => data && roomTyping.saw(data.user_id));
    presence.on("error", showError);
    renderMembers();
    renderRooms();
    if (roomChannels.get(number).state === "subscribed") loadHistory(number);
    $("message-input").focus();
  }

  // -- direct messages ------------------------------------------------------------

  const conversations = new Map(); // user id -> {name, unread}
  let dm = null; // the open conversation: {userId, name, channel, thread}
  const dmTyping = new Typing($("dm-typing"), (userId) =>
    dm && String(dm.userId) === String(userId) ? dm.name : null
  );

  function renderConversations() {
    const items = [];
    for (const [userId, info] of conversations) {
      const button = el("button");
      button.type = "button";
      button.dataset.user = userId;
      button.setAttribute("aria-current", String(Boolean(dm && String(dm.userId) === String(userId))));
      const marker = avatar(userId, info.name, true);
      marker.style.width = marker.style.height = "1.35rem";
      marker.style.fontSize = ".6rem";
      button.append(marker, el("span", info.unread ? "label unread" : "label", info.name));
      if (info.unread) button.append(el("span", "badge", String(info.unread)));
      button.addEventListener("click", () => openDm({ user_id: userId, name: info.name }));
      const item = el("li");
      item.append(button);
      items.push(item);
    }
    $("conversations").replaceChildren(...items);
    $("conversations-empty").hidden = conversations.size > 0;
  }

  function openDm(user) {
    $("app").classList.remove("show-sidebar", "show-members");
    const userId = String(user.user_id);
    if (userId === String(me.user_id)) return;
    const info = conversations.get(userId) || { name: user.name, unread: 0 };
    info.unread = 0;
    conversations.set(userId, info);
    if (dm && dm.userId === userId) {
      renderConversations();
      $("dm-input").focus();
      return;
    }
    closeDm();
    const list = el("ol", "messages messages-dm");
    list.id = "dm-messages";
    list.dataset.empty = `This is the start of your private conversation with ${info.name}.`;
    $("dm-messages").replaceWith(list);
    const channel = client.subscribe(dmChannelName(me.user_id, userId));
    dm = { userId, name: info.name, channel, thread: new Thread(list) };
    const mine = dm;
    channel.on("message.sent", (message) => {
      mine.thread.add(message);
      dmTyping.stop(message.user_id);
    });
    channel.on("client-typing", (data) => data && dmTyping.saw(data.user_id));
    channel.on("subscribed", async () => {
      try {
        const body = await fetchJSON(`/dm/${encodeURIComponent(userId)}/messages`);
        mine.thread.merge(body.messages);
      } catch (err) {
        console.warn(err);
      }
    });
    channel.on("error", showError);
    $("dm-name").textContent = info.name;
    $("dm-sub").textContent = `@${userId} · private`;
    paintAvatar($("dm-avatar"), userId, info.name);
    $("dm-panel").hidden = false;
    renderConversations();
    $("dm-input").focus();
  }

  function closeDm() {
    if (!dm) return;
    dm.channel.off();
    dm.channel.unsubscribe();
    dm = null;
    dmTyping.clear();
    $("dm-panel").hidden = true;
    renderConversations();
  }

  // -- notifications (send_to_user) ----------------------------------------------

  client.on("notification.new", (note) => {
    if (!note || !note.from) return;
    if (note.kind === "dm") {
      const userId = String(note.from.user_id);
      if (dm && dm.userId === userId) return; // already reading it
      const info = conversations.get(userId) || { name: note.from.name, unread: 0 };
      info.name = note.from.name;
      info.unread += 1;
      conversations.set(userId, info);
      renderConversations();
      toast("dm", note.title, note.text, () => openDm(note.from));
    } else if (note.kind === "mention") {
      toast("mention", note.title, note.text, () => openRoom(note.room));
    } else {
      toast("info", note.title || "Notification", note.text);
    }
  });

  // -- connection status ---------------------------------------------------------

  function renderStatus() {
    const state = client.state;
    const status = $("status");
    status.dataset.state = state;
    status.dataset.transport = client.transport || "";
    const words = {
      connected: `live · ${client.transport}`,
      connecting: "connecting…",
      reconnecting: "reconnecting…",
      disconnected: "offline",
    };
    $("status-text").textContent = words[state] || state;
    $("header-status").dataset.state = state;
    $("header-status").title = words[state] || state;
    status.title =
      state === "connected" ? `Connected over ${client.transport}; connection ${client.connectionId}` : "";
  }

  client.on("state", renderStatus);
  client.on("connected", renderStatus);
  client.on("disconnected", (code) => {
    renderStatus();
    roomTyping.clear();
    dmTyping.clear();
    if (code === 4001) toast("error", "Signed out", "Your session ended; sign in again.", () => (location.href = "/login"));
  });

  // -- the forms -------------------------------------------------------------------

  const roomTyper = typingSender(() => presence);
  $("message-input").addEventListener("input", (event) => roomTyper(event.target));
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("message-input");
    const text = input.value.trim();
    if (!text || current === null) return;
    postMessage(roomChannels.get(current), threads.get(current), text);
    input.value = "";
    roomTyper.reset();
  });

  const dmTyper = typingSender(() => dm && dm.channel);
  $("dm-input").addEventListener("input", (event) => dmTyper(event.target));
  $("dm-composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("dm-input");
    const text = input.value.trim();
    if (!text || !dm) return;
    postMessage(dm.channel, dm.thread, text);
    input.value = "";
    dmTyper.reset();
  });
  $("dm-close").addEventListener("click", closeDm);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && dm && document.activeElement === $("dm-input")) closeDm();
  });

  // Leaving the page: close the connection cleanly, so the others see us go at
  // once. A page the browser keeps in its back/forward cache comes back here.
  addEventListener("pagehide", () => client.disconnect());
  addEventListener("pageshow", (event) => {
    if (event.persisted) client.connect();
  });

  $("toggle-sidebar").addEventListener("click", (event) => {
    event.stopPropagation();
    $("app").classList.toggle("show-sidebar");
  });
  $("main").addEventListener("click", () => $("app").classList.remove("show-sidebar", "show-members"));
  $("toggle-members").addEventListener("click", (event) => {
    event.stopPropagation();
    $("app").classList.toggle("show-members");
  });

  // -- start ------------------------------------------------------------------------

  $("me-name").textContent = me.name;
  paintAvatar($("me-avatar"), me.user_id, me.name);
  renderStatus();
  renderConversations();
  const fromHash = [...rooms.values()].find((room) => `#${room.name}` === decodeURIComponent(location.hash));
  openRoom(fromHash ? fromHash.number : page.rooms[0].number);
})();
