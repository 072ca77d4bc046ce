// Citations: a click on [n] in an answer shows that answer's sources in the Sources panel and brings the
// cited section's supporting sentence into view (href "#source-<turn>-<n>-<k>": mark k of card n); the
// original post is a separate, external link on the card. Hovering (or focusing) [n] previews its sentence.
(() => {
  const CITE = 'a[href^="#source-"]';

  function showTurn(turn) {
    const groups = document.querySelectorAll("#sources section.turn");
    let shown = null;
    groups.forEach((g) => {
      const on = g.dataset.turn === String(turn);
      g.hidden = !on;
      if (on) shown = g;
    });
    return shown;
  }

  function openSource(id) {
    const [, turn, n, k] = id.split("-");
    if (!showTurn(turn)) return;
    const card = document.getElementById(`source-${turn}-${n}`);
    if (!card) return;
    document.querySelectorAll("#sources mark.current").forEach((m) => m.classList.remove("current"));
    const marks = card.querySelectorAll(`mark[data-k="${k}"]`);
    marks.forEach((m) => m.classList.add("current"));
    (marks[0] || card.querySelector("mark") || card).scrollIntoView({ block: "center" });
    card.classList.add("flash");
    setTimeout(() => card.classList.remove("flash"), 1600);
  }

  document.addEventListener("click", (event) => {
    const link = event.target.closest(CITE);
    if (link) {
      event.preventDefault();
      event.stopPropagation();
      hidePreview();
      openSource(link.getAttribute("href").slice(1));
      return;
    }
    if (event.target.closest("#sources button.to-chat")) {  // on a phone: back up to the conversation
      document.getElementById("chat").scrollIntoView({ block: "start" });
      return;
    }
    const nav = event.target.closest("#sources button.nav");
    if (nav) {
      const turn = Number(nav.closest("section.turn").dataset.turn) + (nav.classList.contains("next") ? 1 : -1);
      const group = document.querySelector(`#sources section.turn[data-turn="${turn}"]`);
      if (group) showTurn(turn);
    }
  }, true);

  let tip = null;
  function preview(link) {
    if (link.title) {  // our own preview instead of the browser's delayed tooltip
      link.dataset.preview = link.title;
      link.removeAttribute("title");
    }
    if (!link.dataset.preview) return;
    if (!tip) {
      tip = document.createElement("div");
      tip.id = "cite-preview";
      tip.setAttribute("role", "tooltip");
      document.body.appendChild(tip);
    }
    tip.textContent = link.dataset.preview;
    tip.hidden = false;
    const r = link.getBoundingClientRect();
    const width = Math.min(420, window.innerWidth - 16);
    tip.style.width = `${width}px`;
    tip.style.left = `${Math.max(8, Math.min(r.left, window.innerWidth - width - 8)) + window.scrollX}px`;
    const below = r.bottom + 8 + tip.offsetHeight < window.innerHeight;
    tip.style.top = `${(below ? r.bottom + 6 : r.top - tip.offsetHeight - 6) + window.scrollY}px`;
  }
  function hidePreview() {
    if (tip) tip.hidden = true;
  }
  for (const [type, show] of [["mouseover", true], ["focusin", true], ["mouseout", false], ["focusout", false]]) {
    document.addEventListener(type, (event) => {
      const link = event.target.closest && event.target.closest(CITE);
      if (!link) return;
      show ? preview(link) : hidePreview();
    });
  }
})();
