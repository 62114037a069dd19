// Progressive enhancement of the upload form: drop images, check each one as it is chosen, and add
// its report (rendered by the server, the same HTML as the plain form POST) to the page.
// Without this script the form posts to "/" and the server answers with the whole page.
(function () {
  "use strict";
  var form = document.getElementById("upload");
  var input = document.getElementById("file");
  var drop = document.getElementById("drop");
  var hint = document.getElementById("drop-hint");
  var status = document.getElementById("status");
  var reports = document.getElementById("reports");
  if (!form || !window.fetch || !window.FormData) { return; }
  var PARALLEL = 2;
  var queue = [];
  var active = 0;
  var pending = 0;
  hint.hidden = false;

  function say(text) { status.textContent = text; }

  function placeholder(file) {
    var article = document.createElement("article");
    article.className = "report checking";
    article.setAttribute("aria-busy", "true");
    var heading = document.createElement("h2");
    heading.textContent = file.name;
    var line = document.createElement("p");
    line.className = "verdict";
    line.textContent = "Checking\u2026";
    article.appendChild(heading);
    article.appendChild(line);
    reports.appendChild(article);
    return article;
  }

  function failed(article, message) {
    article.className = "report error";
    article.removeAttribute("aria-busy");
    article.querySelector(".verdict").textContent = "Could not check this image: " + message;
  }

  function next() {
    while (active < PARALLEL && queue.length) {
      active += 1;
      check(queue.shift());
    }
  }

  function check(job) {
    var body = new FormData();
    body.append("file", job.file, job.file.name);
    fetch("/?fragment=1", { method: "POST", body: body, headers: { "Accept": "text/html" } })
      .then(function (response) {
        return response.text().then(function (text) { return { ok: response.ok, status: response.status, text: text }; });
      })
      .then(function (answer) {
        var parsed = new DOMParser().parseFromString(answer.text, "text/html");
        if (!answer.ok) {
          var message = parsed.querySelector(".error-message");
          failed(job.article, message ? message.textContent : "the server answered " + answer.status);
          return;
        }
        var article = parsed.querySelector("article");
        if (article) { job.article.replaceWith(document.importNode(article, true)); }
        else { failed(job.article, "the server sent no report"); }
      })
      .catch(function () { failed(job.article, "the server could not be reached"); })
      .then(function () {
        active -= 1;
        pending -= 1;
        say(pending ? pending + " image(s) still being checked" : "All images checked.");
        next();
      });
  }

  function checkFiles(files) {
    if (!files || !files.length) { return; }
    for (var i = 0; i < files.length; i += 1) {
      queue.push({ file: files[i], article: placeholder(files[i]) });
      pending += 1;
    }
    say(pending + " image(s) being checked");
    queue[0].article.scrollIntoView({ block: "nearest" });
    next();
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    checkFiles(input.files);
    form.reset();
  });
  input.addEventListener("change", function () {
    checkFiles(input.files);
    form.reset();
  });
  ["dragenter", "dragover"].forEach(function (name) {
    drop.addEventListener(name, function (event) { event.preventDefault(); drop.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (name) {
    drop.addEventListener(name, function () { drop.classList.remove("over"); });
  });
  drop.addEventListener("drop", function (event) {
    event.preventDefault();
    checkFiles(event.dataTransfer && event.dataTransfer.files);
  });
}());
