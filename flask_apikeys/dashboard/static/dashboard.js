// The copy button of the "shown once" page: the only script of the dashboard (CSP: 'self').
"use strict";
document.addEventListener("click", function (event) {
  var button = event.target.closest("button[data-copy-target]");
  if (!button) {
    return;
  }
  var field = document.getElementById(button.getAttribute("data-copy-target"));
  var status = document.querySelector(".copy-status");
  function done(message) {
    if (status) {
      status.textContent = message;
    }
  }
  field.select();
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(field.value).then(
      function () { done("Copied to the clipboard."); },
      function () { done("Press Ctrl+C (or ⌘C) to copy the selected key."); }
    );
  } else {
    done(document.execCommand("copy") ? "Copied to the clipboard."
      : "Press Ctrl+C (or ⌘C) to copy the selected key.");
  }
});
