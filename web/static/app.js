// The explorer's only script: tooltips and brushing on the charts. Sample text reaches the
// page only through escaped attributes and is put back with textContent, never as HTML.
"use strict";

(function () {
  const tip = document.getElementById("tip");

  function showTip(target, event) {
    const head = target.getAttribute("data-tip-head");
    tip.replaceChildren();
    if (head) {
      const strong = document.createElement("strong");
      strong.textContent = head;
      tip.appendChild(strong);
    }
    const body = document.createElement("span");
    body.textContent = target.getAttribute("data-tip");
    tip.appendChild(body);
    tip.hidden = false;
    moveTip(event);
  }

  function moveTip(event) {
    const x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    const y = event.clientY + 16 + tip.offsetHeight > window.innerHeight ? event.clientY - tip.offsetHeight - 10 : event.clientY + 16;
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }

  document.addEventListener("mouseover", (event) => {
    const target = event.target.closest && event.target.closest("[data-tip]");
    if (target) showTip(target, event);
  });
  document.addEventListener("mousemove", (event) => {
    if (!tip.hidden) moveTip(event);
  });
  document.addEventListener("mouseout", (event) => {
    if (event.target.closest && event.target.closest("[data-tip]")) tip.hidden = true;
  });

  // Brushing: drag across a chart to open the samples in that range.
  const SVG = "http://www.w3.org/2000/svg";
  for (const svg of document.querySelectorAll("svg[data-brush]")) {
    const d = (name) => parseFloat(svg.getAttribute("data-" + name));
    const box = { left: d("left"), right: d("right"), top: d("top"), bottom: d("bottom") };
    const twoD = svg.getAttribute("data-y-param") !== "";
    let start = null;
    let rect = null;

    function point(event) {
      const p = new DOMPoint(event.clientX, event.clientY).matrixTransform(svg.getScreenCTM().inverse());
      return {
        x: Math.max(box.left, Math.min(box.right, p.x)),
        y: Math.max(box.top, Math.min(box.bottom, p.y)),
      };
    }

    function draw(a, b) {
      const x = Math.min(a.x, b.x);
      const y = twoD ? Math.min(a.y, b.y) : box.top;
      rect.setAttribute("x", x);
      rect.setAttribute("y", y);
      rect.setAttribute("width", Math.abs(a.x - b.x));
      rect.setAttribute("height", twoD ? Math.abs(a.y - b.y) : box.bottom - box.top);
    }

    svg.addEventListener("mousedown", (event) => {
      if (event.button !== 0) return;
      svg.dataset.dragged = "0"; // a page restored from the back-forward cache keeps the last drag's flag
      start = point(event);
      rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("class", "brush");
      svg.appendChild(rect);
      draw(start, start);
      event.preventDefault();
    });
    svg.addEventListener("mousemove", (event) => {
      if (start) draw(start, point(event));
    });
    window.addEventListener("mouseup", (event) => {
      if (!start) return;
      const end = point(event);
      const from = start;
      start = null;
      rect.remove();
      if (Math.abs(end.x - from.x) < 4 && (!twoD || Math.abs(end.y - from.y) < 4)) return; // a click
      svg.dataset.dragged = "1";
      const xValue = (px) => d("x0") + ((px - box.left) / (box.right - box.left)) * (d("x1") - d("x0"));
      const yValue = (py) => d("y0") + ((box.bottom - py) / (box.bottom - box.top)) * (d("y1") - d("y0"));
      const url = new URL(svg.getAttribute("data-href"), window.location.href);
      const xParam = svg.getAttribute("data-x-param");
      url.searchParams.set(xParam + "_min", xValue(Math.min(from.x, end.x)).toPrecision(6));
      url.searchParams.set(xParam + "_max", xValue(Math.max(from.x, end.x)).toPrecision(6));
      if (twoD) {
        const yParam = svg.getAttribute("data-y-param");
        url.searchParams.set(yParam + "_min", yValue(Math.max(from.y, end.y)).toPrecision(6));
        url.searchParams.set(yParam + "_max", yValue(Math.min(from.y, end.y)).toPrecision(6));
      }
      window.location.assign(url.toString());
    });
    // A drag must not also follow the link under the pointer where it ends.
    svg.addEventListener(
      "click",
      (event) => {
        if (svg.dataset.dragged === "1") event.preventDefault();
      },
      true,
    );
  }
})();
