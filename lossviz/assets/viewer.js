(function () {
  "use strict";
  const figure = JSON.parse(document.getElementById("lossviz-figure").textContent);
  const plot = document.getElementById("plot");
  const settings = (figure.layout.meta && figure.layout.meta.lossviz) || {};
  const config = {responsive: true, displaylogo: false, scrollZoom: true};
  const surfaceIndices = figure.data.map((t, i) => (t.type === "surface" ? i : -1)).filter(i => i >= 0);
  const scenes = surfaceIndices.map(i => figure.data[i].scene || "scene");
  const LOG_FLOOR = 1e-12;
  // Adaptive surfaces: a hidden scatter3d of the evaluated points in the surface's scene (lossviz.figures,
  // meta "evaluated points"); "evaluated points only" shows them in place of the surface.
  const evaluatedIndices = figure.data.map((t, i) => (t.type === "scatter3d" && t.meta === "evaluated points" ? i : -1))
    .filter(i => i >= 0);
  const evaluatedScenes = new Set(evaluatedIndices.map(i => figure.data[i].scene || "scene"));
  const adaptiveSurfaces = surfaceIndices.filter(i => evaluatedScenes.has(figure.data[i].scene || "scene"));

  // Mirrors lossviz.figures.clipped_z: ln or linear z, null farther than `radius` from α = β = 0.
  function surfaceZ(trace, scale, radius) {
    return trace.customdata.map((row, iy) => row.map((point, ix) => {
      const loss = point[0];
      if (loss === null || !isFinite(loss) || Math.hypot(trace.x[ix], trace.y[iy]) > radius) return null;
      return scale === "log" ? Math.log(Math.max(loss, LOG_FLOOR)) : loss;
    }));
  }

  // The same rule for the evaluated points (flat x, y, customdata).
  function pointsZ(trace, scale, radius) {
    return trace.customdata.map((point, k) => {
      const loss = point[0];
      if (loss === null || !isFinite(loss) || Math.hypot(trace.x[k], trace.y[k]) > radius) return null;
      return scale === "log" ? Math.log(Math.max(loss, LOG_FLOOR)) : loss;
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
    const zs = surfaceIndices.map(i => surfaceZ(figure.data[i], settings.z_scale, settings.clip_radius));
    const title = settings.z_scale === "log" ? "ln(loss)" : "loss";
    const style = {z: zs, "colorbar.title.text": title, "contours.z.show": settings.contours};
    const axes = {};
    const range = settings.shared_z ? zRange(zs) : null;
    if (range) { style.cmin = zs.map(() => range[0]); style.cmax = zs.map(() => range[1]); }
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

  function setEvaluatedOnly(on) {
    settings.evaluated_only = on;
    const visible = adaptiveSurfaces.map(() => !on).concat(evaluatedIndices.map(() => on));
    return Plotly.restyle(plot, {visible: visible}, adaptiveSurfaces.concat(evaluatedIndices)).then(showState);
  }

  function addEvaluatedToggle() {
    const label = document.createElement("label");
    label.title = "show only the points that were evaluated, not interpolated (E)";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.id = "evaluated-only";
    box.addEventListener("change", event => setEvaluatedOnly(event.target.checked));
    label.append(box, " evaluated points only");
    document.getElementById("controls").appendChild(label);
  }

  function showState() {
    document.getElementById("z-scale-name").textContent = settings.z_scale === "log" ? "ln(loss)" : "loss";
    document.getElementById("clip-radius").value = settings.clip_radius;
    document.getElementById("clip-radius-value").textContent = Number(settings.clip_radius).toPrecision(3);
    document.getElementById("show-contours").checked = settings.contours;
    plot.dataset.zScale = settings.z_scale;
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
    if (evaluatedIndices.length) addEvaluatedToggle();
    plot.on("plotly_relayout", syncCameras);
    plot.on("plotly_relayouting", syncCameras);
    document.addEventListener("keydown", event => {
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      const step = settings.max_radius / 20;
      const actions = {
        l: toggleScale, c: () => { settings.contours = !settings.contours; redraw(); }, r: resetCamera,
        "[": () => setRadius(settings.clip_radius - step), "]": () => setRadius(settings.clip_radius + step),
        a: () => setRadius(settings.max_radius),
      };
      if (evaluatedIndices.length) actions.e = () => setEvaluatedOnly(!settings.evaluated_only);
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
})();
