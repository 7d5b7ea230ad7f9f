// The web demo's page: join a room over a WebSocket, show messages, members and worker pids.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const room = params.get("room");
const name = params.get("name") || remembered("name") || randomName();
remember("name", name);
let myPid = null;

$("name").value = name;
$("room").value = room || "";
$("join").addEventListener("submit", (event) => {
  event.preventDefault();
  const next = new URLSearchParams({ room: $("room").value.trim(), name: $("name").value.trim() });
  location.search = next.toString();
});

if (room) connect();

function connect() {
  $("title").textContent = `# ${room}`;
  document.title = `${room} · channel_layer_pg web demo`;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = new URLSearchParams({ name });
  const socket = new WebSocket(`${scheme}://${location.host}/ws/${encodeURIComponent(room)}?${query}`);

  socket.addEventListener("message", (event) => {
    const data = JSON.parse(event.data);
    if (data.type === "welcome") welcome(data);
    else if (data.type === "presence") presence(data);
    else if (data.type === "message") showMessage(data);
  });
  socket.addEventListener("close", (event) => {
    $("say").hidden = true;
    $("status").textContent = event.reason
      ? `Disconnected: ${event.reason}`
      : "Disconnected: the server stopped or restarted. Reload the page to join again.";
  });
  $("say").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value.trim();
    if (text) socket.send(JSON.stringify({ text }));
    $("text").value = "";
  });
}

function welcome(data) {
  myPid = data.pid;
  $("intro").remove();
  $("my-name").textContent = data.name;
  $("my-pid").replaceWith(pidBadge(data.pid, "my-pid", `worker pid ${data.pid}`));
  $("me").hidden = false;
  $("say").hidden = false;
  $("people").hidden = false;
  $("text").focus();
}

function presence(data) {
  $("count").textContent = data.members.length;
  $("members").replaceChildren(
    ...data.members.map((member) => {
      const who = element("span", "", member.name);
      if (member.you) who.append(" ", element("span", "you", "(you)"));
      return element("li", "", who, pidBadge(member.pid));
    }),
  );
  if (data.you || data.event === "here") return;
  const verb = data.event === "join" ? "joined" : "left";
  addToLog(element("li", "notice", `${data.name} ${verb} (worker pid ${data.pid})`));
}

function showMessage(data) {
  // Every message goes through PostgreSQL, even between two pages of one worker; it is between
  // two workers, two processes, that this shows.
  const database = element("span", data.pid === myPid ? "database" : "database crossed", "PostgreSQL");
  const route = element("div", "route", pidBadge(data.pid), "→", database, "→", pidBadge(myPid));
  route.title = `sent by worker pid ${data.pid}, shown by worker pid ${myPid}`;
  const head = element("div", "head", element("span", "from", data.from), clock(data.time));
  const item = element("li", data.you ? "message mine" : "message", head, element("div", "text", data.text), route);
  addToLog(item);
}

function addToLog(item) {
  const log = $("log");
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.append(item);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function pidBadge(pid, id = "", text = `pid ${pid}`) {
  const badge = element("span", "pid", text);
  // One colour per worker process, so the crossing shows at a glance.
  badge.style.setProperty("--hue", String((pid * 137.508) % 360));
  if (id) badge.id = id;
  return badge;
}

function clock(seconds) {
  return element("time", "", new Date(seconds * 1000).toLocaleTimeString([], { hour12: false }));
}

function element(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.append(...children);
  return node;
}

// Per tab, so that two windows of one browser are two people. Storage can be refused (a page
// in a third-party frame), and the demo works without it.
function remembered(key) {
  try {
    return sessionStorage.getItem(key);
  } catch {
    return null;
  }
}

function remember(key, value) {
  try {
    sessionStorage.setItem(key, value);
  } catch {
    // not remembered, then
  }
}

function randomName() {
  const names = ["Ada", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tony", "Margaret"];
  return `${names[Math.floor(Math.random() * names.length)]}-${Math.floor(Math.random() * 90 + 10)}`;
}
