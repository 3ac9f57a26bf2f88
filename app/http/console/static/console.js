// Draws each <pre class="mermaid"> on the page, and those a partial swaps in later.
mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: "neutral" });
function drawDiagrams() {
  mermaid.run({ querySelector: "pre.mermaid:not([data-processed])" });
}
document.addEventListener("DOMContentLoaded", drawDiagrams);
document.addEventListener("htmx:afterSettle", drawDiagrams);
