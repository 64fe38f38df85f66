// The training loss by step as an SVG polyline, redrawn as progress events arrive.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 600;
const HEIGHT = 240;
const MARGIN = 40;

function element(name, attributes, text) {
  const node = document.createElementNS(SVG, name);
  for (const [attribute, value] of Object.entries(attributes)) node.setAttribute(attribute, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// `points`: [{step, loss}] in arrival order. The SVG's data-points says how many are drawn.
export function drawCurve(svg, points) {
  svg.replaceChildren();
  svg.dataset.points = String(points.length);
  if (points.length === 0) {
    svg.append(element("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle" }, "no steps yet"));
    return;
  }
  const steps = points.map((p) => p.step);
  const losses = points.map((p) => p.loss);
  const [minStep, maxStep] = [Math.min(...steps), Math.max(...steps)];
  const [minLoss, maxLoss] = [Math.min(...losses), Math.max(...losses)];
  // A single point or a flat line still gets a visible range.
  const x = (step) => MARGIN + ((step - minStep) / (maxStep - minStep || 1)) * (WIDTH - 2 * MARGIN);
  const y = (loss) => HEIGHT - MARGIN - ((loss - minLoss) / (maxLoss - minLoss || 1)) * (HEIGHT - 2 * MARGIN);
  svg.append(
    element("line", { x1: MARGIN, y1: HEIGHT - MARGIN, x2: WIDTH - MARGIN, y2: HEIGHT - MARGIN, class: "axis" }),
    element("line", { x1: MARGIN, y1: MARGIN, x2: MARGIN, y2: HEIGHT - MARGIN, class: "axis" }),
    element("text", { x: MARGIN - 4, y: MARGIN, "text-anchor": "end" }, maxLoss.toFixed(3)),
    element("text", { x: MARGIN - 4, y: HEIGHT - MARGIN, "text-anchor": "end" }, minLoss.toFixed(3)),
    element("text", { x: MARGIN, y: HEIGHT - MARGIN + 16 }, `step ${minStep}`),
    element("text", { x: WIDTH - MARGIN, y: HEIGHT - MARGIN + 16, "text-anchor": "end" }, `step ${maxStep}`),
    element("polyline", { class: "loss", points: points.map((p) => `${x(p.step)},${y(p.loss)}`).join(" ") }),
  );
  for (const p of points) svg.append(element("circle", { cx: x(p.step), cy: y(p.loss), r: 2.5, class: "loss" }));
}
