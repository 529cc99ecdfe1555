// enclavekit trust: the little JavaScript the pages use. Everything works without it, only less smoothly.
(function () {
  "use strict";

  // Filters: apply as soon as a select changes.
  document.querySelectorAll("form[data-autosubmit] select").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });

  // Copy buttons: <button data-copy="#id">.
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = document.querySelector(button.getAttribute("data-copy"));
      if (!source || !navigator.clipboard) { return; }
      navigator.clipboard.writeText(source.textContent.trim()).then(function () {
        var label = button.textContent;
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = label; }, 1500);
      });
    });
  });

  // A task still running: poll its JSON and reload the page when it is done.
  var waiting = document.querySelector("[data-poll-task]");
  if (waiting) {
    var id = waiting.getAttribute("data-poll-task");
    var tries = 0;
    var poll = function () {
      tries += 1;
      fetch("/api/task/" + encodeURIComponent(id), { headers: { Accept: "application/json" } })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (task) {
          if (task && ["completed", "failed", "cancelled"].indexOf(task.status) >= 0) {
            window.location.reload();
          } else {
            setTimeout(poll, Math.min(1000 + tries * 250, 5000));
          }
        })
        .catch(function () { setTimeout(poll, 3000); });
    };
    setTimeout(poll, 700);
  }
})();
