/* The page editor of the site console (/admin/theme/).
 *
 * State comes from <script type="application/json" id="editor-state">; forms are built from each
 * section type's schema with DOM calls (text is set with textContent, never parsed as HTML).
 * Every change saves the page's draft (the server validates it) and then re-renders the one
 * changed section in the preview, or reloads the preview after reordering, adding or removing.
 * Publish, discard, undo and restore are plain forms; Ctrl+Z outside a text field submits undo.
 */
(function () {
  "use strict";

  var root = document.getElementById("editor");
  var stateNode = document.getElementById("editor-state");
  if (!root || !stateNode) return;
  var S = JSON.parse(stateNode.textContent);
  var messagesNode = document.getElementById("editor-messages");
  var M = messagesNode ? JSON.parse(messagesNode.textContent) : {};  // the page's words, in its language
  var layout = S.layout;
  var csrf = root.getAttribute("data-csrf");
  var list = document.getElementById("section-list");
  var statusLine = document.getElementById("status");
  var frame = document.getElementById("preview");
  var open = {};  // section ids whose settings are shown
  var saving = null;  // the save in flight (a Promise)
  var again = null;  // a save asked for while one was in flight: {section: id or null}
  var timer = null;
  var lastSection;

  layout.order = layout.order || [];
  layout.sections = layout.sections || {};

  // -- small helpers --------------------------------------------------------------------------

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      var value = attrs[name];
      if (value === false || value === null || value === undefined) return;
      node.setAttribute(name, value === true ? "" : String(value));
    });
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function button(label, onClick, attrs) {
    var b = el("button", Object.assign({type: "button", "class": "secondary small"}, attrs || {}), label);
    b.addEventListener("click", onClick);
    return b;
  }

  // A message of the page in its language, "{name}" filled from ``vars``.
  function t(key, vars) {
    var text = Object.prototype.hasOwnProperty.call(M, key) ? M[key] : key;
    Object.keys(vars || {}).forEach(function (name) {
      text = text.split("{" + name + "}").join(String(vars[name]));
    });
    return text;
  }

  function say(text, bad) {
    statusLine.textContent = text;
    statusLine.classList.toggle("bad", !!bad);
  }

  function newId(prefix, taken) {
    var id;
    do {
      id = prefix + "_" + Math.random().toString(16).slice(2, 8);
    } while (taken[id]);
    return id;
  }

  function clone(value) {
    return JSON.parse(JSON.stringify(value === undefined ? {} : value));
  }

  function typeOf(section) {
    return S.types[section.type] || {name: section.type, settings: [], blocks: [], presets: [], max_blocks: 0};
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": csrf},
      body: JSON.stringify(body)
    });
  }

  // -- saving the draft -----------------------------------------------------------------------

  function clearErrors() {
    root.querySelectorAll(".field .error").forEach(function (node) { node.textContent = ""; });
    root.querySelectorAll("[aria-invalid]").forEach(function (node) { node.removeAttribute("aria-invalid"); });
  }

  function showError(answer) {
    var selector = ".field[data-section='" + CSS.escape(answer.section || "") + "']" +
      "[data-block='" + CSS.escape(answer.block || "") + "']" +
      "[data-setting='" + CSS.escape(answer.setting || "") + "']";
    var field = answer.setting ? root.querySelector(selector) : null;
    if (field) {
      field.querySelector(".error").textContent = answer.error;
      var input = field.querySelector("input, select, textarea");
      if (input) input.setAttribute("aria-invalid", "true");
    }
    say(t("not_saved", {error: answer.error || t("check_input")}), true);
  }

  function save(sectionId) {
    if (saving) {
      // One save at a time; the next one sends the newest layout (and reloads if any change needs it).
      again = {section: again && again.section !== sectionId ? null : sectionId};
      return saving;
    }
    say(t("saving"));
    saving = post(S.urls.draft, {page: S.page, layout: layout}).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (answer) {
        if (response.ok) {
          clearErrors();
          say(t("saved"));
          enable("undo");
          enableDiscard();
          if (sectionId) renderSection(sectionId); else reloadPreview();
        } else {
          showError(answer.error ? answer : {error: t("save_failed", {status: response.status})});
        }
      });
    }).catch(function () {
      say(t("net_draft"), true);
    }).then(function () {
      saving = null;
      if (again) {
        var next = again;
        again = null;
        return save(next.section);
      }
    });
    return saving;
  }

  function saveSoon(sectionId) {
    clearTimeout(timer);
    lastSection = sectionId;
    timer = setTimeout(function () { timer = null; save(sectionId); }, 600);
  }

  function flush() {
    if (timer) {
      clearTimeout(timer);
      timer = null;
      return save(lastSection);
    }
    return saving || Promise.resolve();
  }

  function enable(id) {
    var node = document.getElementById(id);
    if (node) node.disabled = false;
  }

  function enableDiscard() {
    var b = document.querySelector("#discard-form button");
    if (b) b.disabled = false;
  }

  // -- the preview ----------------------------------------------------------------------------

  function reloadPreview() {
    if (!frame || !S.preview) return;
    frame.src = S.preview + "&_t=" + Date.now();
  }

  function renderSection(id) {
    if (!frame) return;
    post(S.urls.render, {page: S.page, layout: layout, section: id}).then(function (response) {
      return response.ok ? response.text() : null;
    }).then(function (html) {
      var doc = frame.contentDocument;
      var target = doc && doc.querySelector("[data-section-id='" + CSS.escape(id) + "']");
      if (!html || !target) {
        reloadPreview();  // a section the page does not show yet (e.g. it was empty)
        return;
      }
      var holder = doc.createElement("template");
      holder.innerHTML = html;  // the server's rendering of the validated section
      target.replaceWith(holder.content);
    }).catch(reloadPreview);
  }

  // -- setting fields -------------------------------------------------------------------------

  function coerce(spec, input) {
    switch (spec.type) {
      case "checkbox": return input.checked;
      case "number":
      case "range": return input.value === "" ? null : Number(input.value);
      case "product":
      case "category": return input.value === "" ? null : Number(input.value);
      default: return input.value;
    }
  }

  function options(select, pairs, value) {
    pairs.forEach(function (pair) {
      var option = el("option", {value: pair[0]}, pair[1]);
      if (String(pair[0]) === String(value === null || value === undefined ? "" : value)) option.selected = true;
      select.appendChild(option);
    });
  }

  function inputFor(spec, value, id) {
    var input;
    var kind = spec.type;
    if (kind === "textarea" || kind === "richtext") {
      input = el("textarea", {id: id, rows: kind === "richtext" ? 6 : 3});
      input.value = value || "";
    } else if (kind === "select") {
      input = el("select", {id: id});
      var pairs = (spec.options || []).map(function (o) { return [o.value, o.label]; });
      if (spec.options_source === "plugin_sections") pairs = [["", t("all_plugin_sections")]].concat(S.plugin_sections);
      options(input, pairs, value);
    } else if (kind === "product" || kind === "category") {
      input = el("select", {id: id});
      options(input, [["", kind === "product" ? t("no_choice") : t("all_categories")]].concat(kind === "product" ? S.products : S.categories), value);
    } else if (kind === "checkbox") {
      input = el("input", {id: id, type: "checkbox"});
      input.checked = !!value;
    } else if (kind === "color") {
      input = el("input", {id: id, type: "color"});
      input.value = value || "#000000";
    } else if (kind === "number" || kind === "range") {
      input = el("input", {id: id, type: kind, min: spec.min, max: spec.max, step: spec.step || (kind === "range" ? 1 : "any")});
      input.value = value === null || value === undefined ? "" : value;
    } else {
      input = el("input", {id: id, type: "text", maxlength: kind === "text" ? 500 : 2000,
                           inputmode: kind === "url" || kind === "image" ? "url" : false, placeholder: spec.placeholder || false});
      input.value = value || "";
    }
    return input;
  }

  function field(spec, values, where, onChange) {
    var id = "f-" + where.section + "-" + (where.block || "") + "-" + spec.id;
    var wrap = el("div", {"class": "field" + (spec.type === "checkbox" ? " check" : ""), "data-section": where.section,
                          "data-block": where.block || "", "data-setting": spec.id});
    var value = Object.prototype.hasOwnProperty.call(values, spec.id) ? values[spec.id] : spec["default"];
    var input = inputFor(spec, value, id);
    var label = el("label", {"for": id}, spec.label || spec.id);
    if (spec.type === "checkbox") {
      wrap.appendChild(input);
      wrap.appendChild(document.createTextNode(" "));
      wrap.appendChild(label);
    } else {
      wrap.appendChild(label);
      wrap.appendChild(input);
    }
    if (spec.type === "range") {
      var shown = el("output", {"for": id}, input.value + (spec.unit || ""));
      input.addEventListener("input", function () { shown.textContent = input.value + (spec.unit || ""); });
      wrap.appendChild(shown);
    }
    if (spec.type === "image" && imagesUrl) wrap.appendChild(imageTools(input, id));
    if (spec.info) wrap.appendChild(el("small", {"class": "hint"}, spec.info));
    wrap.appendChild(el("span", {"class": "error", role: "alert"}));
    var typed = ["text", "textarea", "richtext", "url", "image", "number"].indexOf(spec.type) >= 0;
    input.addEventListener(typed ? "input" : "change", function () {
      values[spec.id] = coerce(spec, input);
      onChange(typed);
    });
    if (typed) input.addEventListener("change", function () { flush(); });
    return wrap;
  }

  // -- uploaded images (image settings) -------------------------------------------------------
  // An upload goes to /admin/theme/images (the server checks and re-encodes it) and its URL is put
  // in the field as if typed, so the usual save, validation and preview follow.

  var imagesUrl = root.getAttribute("data-images");

  function useImage(input, url) {
    input.value = url;
    input.dispatchEvent(new Event("input"));
    input.dispatchEvent(new Event("change"));  // saves at once, as leaving a text field does
  }

  function answerOf(response) {
    return response.json().catch(function () { return {}; }).then(function (answer) {
      if (!response.ok && !answer.error) {
        answer.error = response.status === 429 ? t("too_many") : t("failed", {status: response.status});
      }
      return answer;
    });
  }

  function tell(node, text, bad) {
    node.textContent = text;
    node.classList.toggle("bad", !!bad);
  }

  function imageTools(input, id) {
    var box = el("div", {"class": "image-tools"});
    var fileId = id + "-file";
    var pickerId = id + "-picker";
    var file = el("input", {id: fileId, type: "file", accept: "image/png,image/jpeg,image/webp,image/gif"});
    var note = el("span", {"class": "upload-status", role: "status", "aria-live": "polite"});
    var picker = el("div", {"class": "image-picker", id: pickerId, role: "group", "aria-label": t("uploaded_images"), hidden: true});
    box.appendChild(el("label", {"for": fileId, "class": "upload-label"}, t("upload")));
    box.appendChild(file);
    var toggle = button(t("choose_uploaded"), function () {
      var show = picker.hidden;
      picker.hidden = !show;
      toggle.setAttribute("aria-expanded", show ? "true" : "false");
      if (show) fillPicker(picker, input, note);
    }, {"aria-expanded": "false", "aria-controls": pickerId});
    box.appendChild(toggle);
    box.appendChild(note);
    box.appendChild(picker);

    file.addEventListener("change", function () {
      if (!file.files.length) return;
      var data = new FormData();
      data.append("image", file.files[0]);
      tell(note, t("uploading"));
      fetch(imagesUrl, {method: "POST", credentials: "same-origin",
                        headers: {"X-CSRFToken": csrf, "Accept": "application/json"}, body: data})
        .then(answerOf).then(function (answer) {
          if (answer.url) {
            tell(note, t("uploaded"));
            useImage(input, answer.url);
            if (!picker.hidden) fillPicker(picker, input, note);
          } else {
            tell(note, t("not_uploaded", {error: answer.error}), true);
          }
        })
        .catch(function () { tell(note, t("net_upload"), true); })
        .then(function () { file.value = ""; });
    });
    return box;
  }

  function fillPicker(picker, input, note) {
    picker.textContent = "";
    picker.appendChild(el("p", {"class": "muted"}, t("loading")));
    fetch(imagesUrl, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(answerOf).then(function (answer) {
        picker.textContent = "";
        var images = answer.images || [];
        if (answer.error) picker.appendChild(el("p", {"class": "error"}, answer.error));
        else if (!images.length) picker.appendChild(el("p", {"class": "muted"}, t("no_images")));
        images.forEach(function (image, index) {
          var item = el("figure", {"class": "image-choice"});
          var choose = button("", function () {
            useImage(input, image.url);
            tell(note, t("image_chosen"));
          }, {"class": "thumb", "aria-label": t("use_image", {n: index + 1, name: image.name}),
              "aria-pressed": input.value === image.url ? "true" : "false"});
          choose.appendChild(el("img", {src: image.url, alt: "", width: 64, height: 64, loading: "lazy"}));
          item.appendChild(choose);
          var used = image.used && image.used.length;
          item.appendChild(button(t("delete"), function () {
            if (!window.confirm(t("confirm_delete_image"))) return;
            fetch(imagesUrl + "/" + encodeURIComponent(image.name) + "/delete", {
              method: "POST", credentials: "same-origin", headers: {"X-CSRFToken": csrf, "Accept": "application/json"}
            }).then(answerOf).then(function (result) {
              if (result.ok) { tell(note, t("image_deleted")); fillPicker(picker, input, note); }
              else tell(note, t("not_deleted", {error: result.error}), true);
            }).catch(function () { tell(note, t("net_delete"), true); });
          }, {"aria-label": t("delete_image", {n: index + 1}), disabled: !!used,
              title: used ? t("in_use", {files: image.used.join(t("list_separator"))}) : false}));
          picker.appendChild(item);
        });
      })
      .catch(function () { picker.textContent = ""; tell(note, t("net_list"), true); });
  }

  // -- the section list -----------------------------------------------------------------------

  function summary(section) {
    var s = section.settings || {};
    var words = s.heading || s.text || s.title || "";
    var name = typeOf(section).name;
    return name + (words && words !== name ? " · " + String(words).slice(0, 24) : "");
  }

  function move(array, index, by) {
    var to = index + by;
    if (to < 0 || to >= array.length) return false;
    var item = array.splice(index, 1)[0];
    array.splice(to, 0, item);
    return true;
  }

  function refocus(selector) {
    var node = list.querySelector(selector);
    if (node) node.focus();
  }

  function sectionItem(id) {
    var section = layout.sections[id];
    var type = typeOf(section);
    section.settings = section.settings || {};
    var li = el("li", {"class": "section-item" + (section.disabled ? " is-hidden" : ""), "data-id": id,
                       "data-type": section.type});
    var head = el("div", {"class": "section-head"});
    head.appendChild(el("span", {"class": "handle", "aria-hidden": "true", title: t("drag")}, "⠿"));
    var toggle = button(summary(section), function () {
      open[id] = !open[id];
      draw();
      refocus("li[data-id='" + CSS.escape(id) + "'] .toggle");
    }, {"class": "toggle", "aria-expanded": open[id] ? "true" : "false", "aria-controls": "body-" + id});
    head.appendChild(toggle);
    if (section.disabled) head.appendChild(el("span", {"class": "tag tag-off"}, t("hidden")));
    var index = layout.order.indexOf(id);
    var name = summary(section);
    head.appendChild(button(t("up"), function () {
      if (move(layout.order, index, -1)) { draw(); refocus("li[data-id='" + CSS.escape(id) + "'] .up"); save(null); }
    }, {"class": "secondary small up", "aria-label": t("up_named", {name: name}), disabled: index === 0}));
    head.appendChild(button(t("down"), function () {
      if (move(layout.order, index, 1)) { draw(); refocus("li[data-id='" + CSS.escape(id) + "'] .down"); save(null); }
    }, {"class": "secondary small down", "aria-label": t("down_named", {name: name}), disabled: index === layout.order.length - 1}));
    head.appendChild(button(section.disabled ? t("show") : t("hide"), function () {
      if (section.disabled) delete section.disabled; else section.disabled = true;
      draw();
      refocus("li[data-id='" + CSS.escape(id) + "'] .hide");
      save(null);
    }, {"class": "secondary small hide", "aria-label": t(section.disabled ? "show_named" : "hide_named", {name: name})}));
    if (type.presets && type.presets.length) {  // a page's own content (no preset) cannot be removed
      head.appendChild(button(t("delete"), function () {
        delete layout.sections[id];
        layout.order = layout.order.filter(function (other) { return other !== id; });
        draw();
        say(t("section_deleted", {name: name}));
        save(null);
      }, {"class": "secondary small remove", "aria-label": t("delete_named", {name: name})}));
    }
    li.appendChild(head);
    if (open[id]) li.appendChild(sectionBody(id, section, type));
    return li;
  }

  function sectionBody(id, section, type) {
    var body = el("div", {"class": "section-body", id: "body-" + id});
    (type.settings || []).forEach(function (spec) {
      body.appendChild(field(spec, section.settings, {section: id}, function (typed) {
        if (typed) saveSoon(id); else save(id);
      }));
    });
    if (!(type.settings || []).length && !(type.blocks || []).length) {
      body.appendChild(el("p", {"class": "muted"}, t("no_settings")));
    }
    if ((type.blocks || []).length) body.appendChild(blocksOf(id, section, type));
    return body;
  }

  function blocksOf(id, section, type) {
    var wrap = el("div", {"class": "blocks"});
    section.blocks = section.blocks || {};
    section.block_order = section.block_order || Object.keys(section.blocks);
    var order = section.block_order;
    var kinds = {};
    type.blocks.forEach(function (b) { kinds[b.type] = b; });
    wrap.appendChild(el("h3", {}, t("blocks_count", {count: order.length, max: type.max_blocks})));
    order.forEach(function (bid, index) {
      var block = section.blocks[bid];
      if (!block) return;
      block.settings = block.settings || {};
      var kind = kinds[block.type] || {name: block.type, settings: []};
      var set = el("fieldset", {"class": "block", "data-block-id": bid});
      var title = kind.name + " " + (index + 1);
      set.appendChild(el("legend", {}, title));
      kind.settings.forEach(function (spec) {
        set.appendChild(field(spec, block.settings, {section: id, block: bid}, function (typed) {
          if (typed) saveSoon(id); else save(id);
        }));
      });
      var tools = el("div", {"class": "block-tools"});
      tools.appendChild(button(t("up"), function () {
        if (move(order, index, -1)) { draw(); save(id); }
      }, {"aria-label": t("up_named", {name: title}), disabled: index === 0}));
      tools.appendChild(button(t("down"), function () {
        if (move(order, index, 1)) { draw(); save(id); }
      }, {"aria-label": t("down_named", {name: title}), disabled: index === order.length - 1}));
      tools.appendChild(button(t("delete"), function () {
        delete section.blocks[bid];
        section.block_order = order.filter(function (other) { return other !== bid; });
        draw();
        save(id);
      }, {"aria-label": t("delete_named", {name: title})}));
      set.appendChild(tools);
      wrap.appendChild(set);
    });
    type.blocks.forEach(function (kind) {
      wrap.appendChild(button(t("add_block", {name: kind.name}), function () {
        var bid = newId(kind.type, section.blocks);
        section.blocks[bid] = {type: kind.type, settings: {}};
        section.block_order.push(bid);
        draw();
        save(id);
      }, {disabled: order.length >= type.max_blocks}));
    });
    return wrap;
  }

  function draw() {
    list.textContent = "";
    layout.order.forEach(function (id) {
      if (layout.sections[id]) list.appendChild(sectionItem(id));
    });
  }

  // -- adding sections ------------------------------------------------------------------------

  function fillPresets() {
    var select = document.getElementById("add-preset");
    Object.keys(S.types).forEach(function (name) {
      var type = S.types[name];
      (type.presets || []).forEach(function (preset, i) {
        var label = preset.name === type.name ? type.name : t("preset_label", {preset: preset.name, type: type.name});
        select.appendChild(el("option", {value: name + "|" + i}, label));
      });
    });
    document.getElementById("add-section").addEventListener("click", function () {
      if (!select.value) return;
      var parts = select.value.split("|");
      var preset = S.types[parts[0]].presets[Number(parts[1])];
      var id = newId(parts[0], layout.sections);
      var section = {type: parts[0], settings: clone(preset.settings), blocks: {}, block_order: []};
      (preset.blocks || []).forEach(function (b) {
        var bid = newId(b.type, section.blocks);
        section.blocks[bid] = {type: b.type, settings: clone(b.settings)};
        section.block_order.push(bid);
      });
      layout.sections[id] = section;
      layout.order.push(id);
      open[id] = true;
      draw();
      say(t("section_added", {name: preset.name}));
      refocus("li[data-id='" + CSS.escape(id) + "'] .toggle");
      save(null);
    });
  }

  // -- wiring ---------------------------------------------------------------------------------

  function isTextField(node) {
    if (!node) return false;
    if (node.isContentEditable || node.tagName === "TEXTAREA") return true;
    return node.tagName === "INPUT" && ["checkbox", "radio", "range", "color", "button", "submit"].indexOf(node.type) < 0;
  }

  document.addEventListener("keydown", function (event) {
    if ((event.ctrlKey || event.metaKey) && !event.shiftKey && !event.altKey && event.key.toLowerCase() === "z"
        && !isTextField(document.activeElement)) {
      event.preventDefault();
      flush().then(function () {
        var undo = document.getElementById("undo");
        if (undo && !undo.disabled) undo.form.submit(); else say(t("nothing_to_undo"), true);
      });
    }
  });

  // A form (publish, undo, restore…) waits for the draft being saved.
  document.addEventListener("submit", function (event) {
    if (!timer && !saving) return;
    event.preventDefault();
    var form = event.target;
    flush().then(function () { form.submit(); });
  });

  var titleInput = document.getElementById("page-title");  // a custom page's title
  if (titleInput) {
    titleInput.addEventListener("input", function () { layout.title = titleInput.value; saveSoon(null); });
    titleInput.addEventListener("change", function () { flush(); });
  }

  var picker = document.getElementById("page-select");
  if (picker) picker.addEventListener("change", function () { picker.form.submit(); });

  function view(phone) {
    if (!frame) return;
    frame.parentNode.classList.toggle("phone", phone);
    document.getElementById("view-phone").setAttribute("aria-pressed", phone ? "true" : "false");
    document.getElementById("view-desktop").setAttribute("aria-pressed", phone ? "false" : "true");
  }
  document.getElementById("view-phone").addEventListener("click", function () { view(true); });
  document.getElementById("view-desktop").addEventListener("click", function () { view(false); });
  document.getElementById("reload-preview").addEventListener("click", reloadPreview);

  if (window.Sortable) {
    window.Sortable.create(list, {
      handle: ".handle", animation: 150, draggable: ".section-item",
      onEnd: function (event) {
        if (event.oldIndex === event.newIndex) return;
        layout.order = Array.prototype.map.call(list.children, function (li) { return li.getAttribute("data-id"); });
        draw();
        save(null);
      }
    });
  }

  fillPresets();
  draw();
})();
