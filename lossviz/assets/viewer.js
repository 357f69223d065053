(function () {
  "use strict";
  const figure = JSON.parse(document.getElementById("lossviz-figure").textContent);
  const plot = document.getElementById("plot");
  const settings = (figure.layout.meta && figure.layout.meta.lossviz) || {};
  const config = {responsive: true, displaylogo: false, scrollZoom: true};
  const surfaceIndices = figure.data.map((t, i) => (t.type === "surface" ? i : -1)).filter(i => i >= 0);
  const scenes = surfaceIndices.map(i => figure.data[i].scene || "scene");
  const LOG_FLOOR = 1e-12;
  // Li et al.'s static views (lossviz.figures.views_figure) travel in the settings; drawn in their own div.
  const views = settings.views;
  delete settings.views;
  // Each surface's grid and its own [loss, accuracy, standard error(, label)] per grid point, kept apart from
  // the trace, whose x, y and customdata are redrawn for the clip disk's rim (meta.rim: the rim points' own
  // values, where customdata holds the interpolated ones drawn).
  const grids = surfaceIndices.map(i => {
    const trace = figure.data[i];
    const meta = trace.meta || {};
    const data = trace.customdata.map(row => row.map(point => point.slice()));
    for (const [iy, ix, ...values] of meta.rim || []) values.forEach((v, k) => { data[iy][ix][k] = v; });
    return {xs: meta.grid_x || trace.x, ys: meta.grid_y || trace.y, data: data};
  });
  // Adaptive surfaces: a hidden scatter3d of the evaluated points in the surface's scene (lossviz.figures,
  // meta "evaluated points"); "evaluated points only" shows them in place of the surface.
  const evaluatedIndices = figure.data.map((t, i) => (t.type === "scatter3d" && t.meta === "evaluated points" ? i : -1))
    .filter(i => i >= 0);
  const evaluatedScenes = new Set(evaluatedIndices.map(i => figure.data[i].scene || "scene"));
  const adaptiveSurfaces = surfaceIndices.filter(i => evaluatedScenes.has(figure.data[i].scene || "scene"));

  function cellIndex(axis, value) {  // numpy searchsorted(side="right") - 1, kept inside the grid
    let low = 0, high = axis.length;
    while (low < high) { const mid = (low + high) >> 1; if (axis[mid] <= value) low = mid + 1; else high = mid; }
    return Math.min(Math.max(low - 1, 0), axis.length - 2);
  }

  function bilinear(grid, a, b) {
    const ix = cellIndex(grid.xs, a), iy = cellIndex(grid.ys, b);
    const tx = Math.min(Math.max((a - grid.xs[ix]) / (grid.xs[ix + 1] - grid.xs[ix]), 0), 1);
    const ty = Math.min(Math.max((b - grid.ys[iy]) / (grid.ys[iy + 1] - grid.ys[iy]), 0), 1);
    const values = [];
    for (let k = 0; k < 3; k++) {
      const c = [grid.data[iy][ix][k], grid.data[iy][ix + 1][k], grid.data[iy + 1][ix][k], grid.data[iy + 1][ix + 1][k]];
      if (c.some(v => v === null || !isFinite(v))) return null;
      values.push((1 - ty) * ((1 - tx) * c[0] + tx * c[1]) + ty * ((1 - tx) * c[2] + tx * c[3]));
    }
    return values;
  }

  // Mirrors lossviz.figures.disk_mesh: points inside the disk as they are; outside points with a neighbour
  // (of 8) inside moved along their ray onto the circle, values interpolated from the grid there; the rest
  // dropped (null). Returns 2-D x, y and the point data drawn (null where nothing is drawn).
  function diskMesh(grid, radius) {
    const ny = grid.ys.length, nx = grid.xs.length;
    const inside = grid.ys.map(b => grid.xs.map(a => Math.hypot(a, b) <= radius));
    const x = [], y = [], data = [];
    for (let iy = 0; iy < ny; iy++) {
      x.push([]); y.push([]); data.push([]);
      for (let ix = 0; ix < nx; ix++) {
        const a = grid.xs[ix], b = grid.ys[iy];
        let near = false;
        for (let dy = -1; dy <= 1 && !near; dy++) for (let dx = -1; dx <= 1; dx++) {
          const jy = iy + dy, jx = ix + dx;
          if (jy >= 0 && jy < ny && jx >= 0 && jx < nx && inside[jy][jx]) { near = true; break; }
        }
        if (inside[iy][ix] || !near || nx < 2 || ny < 2) {
          x[iy].push(a); y[iy].push(b); data[iy].push(inside[iy][ix] ? grid.data[iy][ix] : null);
          continue;
        }
        const scale = radius / Math.hypot(a, b);
        const values = bilinear(grid, a * scale, b * scale);
        x[iy].push(a * scale); y[iy].push(b * scale);
        data[iy].push(values && grid.data[iy][ix].length > 3 ? values.concat(grid.data[iy][ix].slice(3)) : values);
      }
    }
    return {x: x, y: y, data: data};
  }

  function toZ(loss, scale) {
    if (loss === null || loss === undefined || !isFinite(loss)) return null;
    return scale === "log" ? Math.log(Math.max(loss, LOG_FLOOR)) : loss;
  }

  // The same rule for the evaluated points (flat x, y, customdata).
  function pointsZ(trace, scale, radius) {
    return trace.customdata.map((point, k) => {
      if (Math.hypot(trace.x[k], trace.y[k]) > radius) return null;
      return toZ(point[0], scale);
    });
  }

  function zRange(zs) {
    let low = Infinity, high = -Infinity;
    for (const z of zs) for (const row of z) for (const v of row) {
      if (v !== null) { if (v < low) low = v; if (v > high) high = v; }
    }
    return low <= high ? [low, high] : null;
  }

  function redraw() {
    const meshes = grids.map(grid => diskMesh(grid, settings.clip_radius));
    const zs = meshes.map(mesh => mesh.data.map(row => row.map(point => (point ? toZ(point[0], settings.z_scale) : null))));
    const title = settings.z_scale === "log" ? "ln(loss)" : "loss";
    const shared = Boolean(settings.shared_z) && surfaceIndices.length > 1;
    // Undrawn points keep their raw data for the hover (they are never hovered: no z).
    const hover = meshes.map((mesh, k) => mesh.data.map((row, iy) => row.map((point, ix) => point || grids[k].data[iy][ix])));
    const style = {x: meshes.map(m => m.x), y: meshes.map(m => m.y), z: zs, customdata: hover,
                   "colorbar.title.text": title, "contours.z.show": settings.contours,
                   showscale: surfaceIndices.map((_, k) => (surfaceIndices.length > 1 ? shared && k === 0 : true))};
    const axes = {};
    const range = shared ? zRange(zs) : null;
    style.cmin = zs.map(() => (range ? range[0] : null));
    style.cmax = zs.map(() => (range ? range[1] : null));
    style.cauto = zs.map(() => !range);
    for (const scene of scenes) {
      axes[scene + ".zaxis.title.text"] = title;
      axes[scene + ".zaxis.autorange"] = !range;
      if (range) axes[scene + ".zaxis.range"] = range;
    }
    return Plotly.update(plot, style, axes, surfaceIndices).then(() => {
      if (!evaluatedIndices.length) return null;
      const zs = evaluatedIndices.map(i => pointsZ(figure.data[i], settings.z_scale, settings.clip_radius));
      return Plotly.restyle(plot, {z: zs}, evaluatedIndices);
    }).then(showState);
  }

  function setSharedZ(on) {
    settings.shared_z = on;
    return redraw();
  }

  function addCheckbox(id, text, title, onChange) {
    const label = document.createElement("label");
    label.title = title;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.id = id;
    box.addEventListener("change", event => onChange(event.target.checked));
    label.append(box, " " + text);
    document.getElementById("controls").appendChild(label);
  }

  function setEvaluatedOnly(on) {
    settings.evaluated_only = on;
    const visible = adaptiveSurfaces.map(() => !on).concat(evaluatedIndices.map(() => on));
    return Plotly.restyle(plot, {visible: visible}, adaptiveSurfaces.concat(evaluatedIndices)).then(showState);
  }

  function showState() {
    document.getElementById("z-scale-name").textContent = settings.z_scale === "log" ? "ln(loss)" : "loss";
    document.getElementById("clip-radius").value = settings.clip_radius;
    document.getElementById("clip-radius-value").textContent = Number(settings.clip_radius).toPrecision(3);
    document.getElementById("show-contours").checked = settings.contours;
    plot.dataset.zScale = settings.z_scale;
    plot.dataset.sharedZ = settings.shared_z ? "1" : "0";
    const sharedBox = document.getElementById("shared-z");
    if (sharedBox) sharedBox.checked = Boolean(settings.shared_z);
    plot.dataset.clipRadius = settings.clip_radius;
    if (evaluatedIndices.length) {
      document.getElementById("evaluated-only").checked = Boolean(settings.evaluated_only);
      plot.dataset.evaluatedOnly = settings.evaluated_only ? "1" : "0";
    }
  }

  function setRadius(radius) {
    settings.clip_radius = Math.min(Math.max(radius, 0), settings.max_radius);
    return redraw();
  }

  // Keep every scene's camera equal to the one the user moved (LossPlot's synchronised views).
  let syncing = false;
  function syncCameras(event) {
    if (syncing || scenes.length < 2 || !event) return;
    const moved = Object.keys(event).map(k => k.match(/^(scene\d*)\.camera$/)).find(m => m);
    if (!moved) return;
    const camera = event[moved[0]], update = {};
    for (const scene of scenes) if (scene !== moved[1]) update[scene + ".camera"] = camera;
    syncing = true;
    Plotly.relayout(plot, update).finally(() => { syncing = false; });
  }

  function resetCamera() {
    const update = {};
    for (const scene of scenes) update[scene + ".camera"] = settings.default_camera;
    syncing = true;
    return Plotly.relayout(plot, update).finally(() => { syncing = false; });
  }

  function setUpControls() {
    const slider = document.getElementById("clip-radius");
    slider.min = 0;
    slider.max = settings.max_radius;
    slider.step = settings.max_radius / 200;
    slider.addEventListener("input", () => setRadius(Number(slider.value)));
    document.getElementById("toggle-z").addEventListener("click", toggleScale);
    document.getElementById("show-contours").addEventListener("change", event => {
      settings.contours = event.target.checked; redraw();
    });
    document.getElementById("reset-camera").addEventListener("click", resetCamera);
    if (evaluatedIndices.length) {
      addCheckbox("evaluated-only", "evaluated points only",
                  "show only the points that were evaluated, not interpolated (E)", setEvaluatedOnly);
    }
    if (surfaceIndices.length > 1) {
      addCheckbox("shared-z", "shared z scale", "one z range and colour scale for every surface, or each its own (Z)",
                  setSharedZ);
    }
    // When a drag ends, not at each of its steps: redrawing every other scene per step is slow in software
    // WebGL with the rim's 2-D meshes; the other scenes follow once the mouse is released.
    plot.on("plotly_relayout", syncCameras);
    document.addEventListener("keydown", event => {
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      const step = settings.max_radius / 20;
      const actions = {
        l: toggleScale, c: () => { settings.contours = !settings.contours; redraw(); }, r: resetCamera,
        "[": () => setRadius(settings.clip_radius - step), "]": () => setRadius(settings.clip_radius + step),
        a: () => setRadius(settings.max_radius),
      };
      if (evaluatedIndices.length) actions.e = () => setEvaluatedOnly(!settings.evaluated_only);
      if (surfaceIndices.length > 1) actions.z = () => setSharedZ(!settings.shared_z);
      const action = actions[event.key.toLowerCase()];
      if (action) { event.preventDefault(); action(); }
    });
    showState();
  }

  function toggleScale() {
    settings.z_scale = settings.z_scale === "log" ? "linear" : "log";
    return redraw();
  }

  Plotly.newPlot(plot, figure.data, figure.layout, config).then(() => {
    if (surfaceIndices.length) setUpControls();
    plot.dataset.ready = "1";
  });

  // The static views are drawn when they come near the screen: a long page loads as fast as its first figure.
  const viewsDiv = document.getElementById("views");
  if (views && viewsDiv) {
    const draw = () => Plotly.newPlot(viewsDiv, views.data, views.layout, config)
      .then(() => { viewsDiv.dataset.ready = "1"; });
    if ("IntersectionObserver" in window) {
      const watcher = new IntersectionObserver(entries => {
        if (entries.some(entry => entry.isIntersecting)) { watcher.disconnect(); draw(); }
      }, {rootMargin: "200px"});
      watcher.observe(viewsDiv);
    } else {
      draw();
    }
  }
})();
