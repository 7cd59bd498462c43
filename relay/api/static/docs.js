// Renders /openapi.json as a page: no framework, no network beyond relay itself.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function resolve(spec, schema) {
  if (!schema || !schema.$ref) return schema;
  const path = schema.$ref.replace(/^#\//, "").split("/");
  return path.reduce((node, key) => (node ? node[key] : undefined), spec);
}

// A readable outline of a schema, following $refs a few levels deep.
function outline(spec, schema, depth) {
  if (!schema) return "any";
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return depth > 3 ? name : outline(spec, resolve(spec, schema), depth + 1);
  }
  if ("const" in schema) return JSON.stringify(schema.const);
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  for (const key of ["oneOf", "anyOf"]) {
    if (schema[key]) return schema[key].map((s) => outline(spec, s, depth + 1)).join(" | ");
  }
  if (schema.allOf) {
    const merged = { type: "object", properties: {}, required: [] };
    for (const part of schema.allOf) {
      const sub = resolve(spec, part) || {};
      Object.assign(merged.properties, sub.properties || {});
      merged.required.push(...(sub.required || []));
    }
    return outline(spec, merged, depth + 1);
  }
  const type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type;
  if (type === "array") return "[" + outline(spec, schema.items, depth + 1) + "]";
  if (schema.properties) {
    const pad = "  ".repeat(depth);
    const required = new Set(schema.required || []);
    const lines = Object.entries(schema.properties).map(([name, sub]) => {
      const mark = required.has(name) ? "" : "?";
      return pad + "  " + name + mark + ": " + outline(spec, sub, depth + 1);
    });
    return "{\n" + lines.join(",\n") + "\n" + pad + "}";
  }
  return type || "any";
}

function parameters(op) {
  if (!op.parameters || !op.parameters.length) return null;
  const rows = op.parameters.map((p) =>
    el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in),
      el("td", {}, p.required ? "required" : "optional"),
      el("td", {}, p.description || "", " ", el("code", {}, JSON.stringify(p.schema || {})))));
  return el("div", {}, el("h4", {}, "Parameters"),
    el("table", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, ""),
      el("th", {}, "")), ...rows));
}

function content(spec, body) {
  if (!body || !body.content) return [];
  return Object.entries(body.content).map(([type, media]) =>
    el("div", {}, el("code", {}, type), el("pre", {}, outline(spec, media.schema, 0))));
}

function responses(spec, op) {
  const rows = Object.entries(op.responses || {}).map(([status, raw]) => {
    const response = resolve(spec, raw) || {};
    const cls = Number(status) >= 400 ? "status error" : "status";
    return el("tr", {}, el("td", {}, el("span", { class: cls }, status)),
      el("td", {}, response.description || "", ...content(spec, response)));
  });
  return el("div", {}, el("h4", {}, "Responses"), el("table", {}, ...rows));
}

function operation(spec, path, method, op) {
  const security = (op.security || spec.security || [])
    .map((s) => Object.keys(s).join(" + ") || "none").join(" or ");
  const body = resolve(spec, op.requestBody);
  return el("details", { class: "op", id: op.operationId || "" },
    el("summary", {}, el("span", { class: "method " + method }, method),
      el("span", { class: "path" }, path), el("span", { class: "summary" }, op.summary || "")),
    el("div", { class: "body" },
      op.description ? el("p", {}, op.description) : null,
      el("p", {}, "Auth: ", el("code", {}, security || "none"),
        " · operationId ", el("code", {}, op.operationId || "")),
      parameters(op),
      body ? el("div", {}, el("h4", {}, "Request body"), ...content(spec, body)) : null,
      responses(spec, op)));
}

function render(spec) {
  document.title = spec.info.title + " API";
  document.getElementById("title").textContent = spec.info.title + " API";
  document.getElementById("version").textContent = "version " + spec.info.version;
  const main = document.getElementById("docs");
  main.replaceChildren(el("p", { class: "intro" }, spec.info.description || ""));
  const groups = new Map((spec.tags || []).map((t) => [t.name, []]));
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(item)) {
      if (typeof op !== "object" || !op.responses) continue;
      const tag = (op.tags || ["other"])[0];
      if (!groups.has(tag)) groups.set(tag, []);
      groups.get(tag).push(operation(spec, path, method, op));
    }
  }
  for (const [tag, ops] of groups) {
    if (!ops.length) continue;
    const about = (spec.tags || []).find((t) => t.name === tag);
    main.append(el("h2", { id: "tag-" + tag }, tag),
      about && about.description ? el("p", {}, about.description) : null, ...ops);
  }
}

fetch("/openapi.json")
  .then((response) => response.json())
  .then(render)
  .catch((error) => {
    document.getElementById("docs").replaceChildren(
      el("p", { class: "error" }, "Could not load /openapi.json: " + error));
  });
