// Optional: sort the turns by a column, show one tier, open or close every turn.
// Without this script the page is whole: the turns in order, each opening on a click.
// It reads the page's text only through textContent and attributes, never as markup.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  document.querySelectorAll(".turns").forEach(function (table) {
    var rows = function () {
      return Array.prototype.slice.call(table.querySelectorAll(":scope > details.turn"));
    };
    var head = table.querySelector(".turn-head");
    head.querySelectorAll("span").forEach(function (cell, column) {
      sortable(table, rows, cell, column);
    });
    var tools = document.createElement("div");
    tools.className = "tools";
    tools.appendChild(tierFilter(rows));
    tools.appendChild(button("open all", function () { setOpen(rows, true); }));
    tools.appendChild(button("close all", function () { setOpen(rows, false); }));
    table.parentNode.insertBefore(tools, table);
  });

  function button(label, onClick) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.addEventListener("click", onClick);
    return b;
  }

  function sortable(table, rows, cell, column) {
    var numeric = cell.classList.contains("num");
    var ascending = true;
    var label = cell.textContent;
    cell.textContent = "";
    var b = button(label, function () {
      var key = function (row) {
        var v = row.querySelector("summary").children[column].getAttribute("data-v");
        return v === "" ? null : numeric ? parseFloat(v) : v;
      };
      var direction = ascending ? 1 : -1;
      rows().sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === y) return 0;
        if (x === null) return 1;    // unknown values last, either way
        if (y === null) return -1;
        return (x < y ? -1 : 1) * direction;
      }).forEach(function (row) { table.appendChild(row); });
      ascending = !ascending;
    });
    b.title = "sort by " + label;
    cell.appendChild(b);
  }

  function tierFilter(rows) {
    var select = document.createElement("select");
    select.className = "tier-filter";
    select.setAttribute("aria-label", "show the turns of one tier");
    select.appendChild(new Option("every tier", ""));
    var seen = [];
    rows().forEach(function (row) {
      var tier = row.getAttribute("data-tier");
      if (seen.indexOf(tier) < 0) {
        seen.push(tier);
        select.appendChild(new Option(tier, tier));
      }
    });
    select.addEventListener("change", function () {
      rows().forEach(function (row) {
        row.hidden = select.value !== "" && row.getAttribute("data-tier") !== select.value;
      });
    });
    return select;
  }

  function setOpen(rows, open) {
    rows().forEach(function (row) { if (!row.hidden) row.open = open; });
  }
})();
