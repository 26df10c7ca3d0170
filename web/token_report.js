// Keeps the token report of Kandinsky Video Text Encode on the node after the run.
//
// The node sends its report twice: as progress text (drawn on the node while the run goes on)
// and as its `text` UI output. Frontends up to about 1.3x keep the progress-text widget after
// the run, so the report stays there and nothing is added. Newer frontends remove progress
// text when the run ends, and they offer the read-only text preview widget that their own
// PreviewAny uses (window.comfyAPI.textPreviewWidgets): there the `text` output is shown in one.
// Feature detection only; no frontend version is read.
import { app } from "../../scripts/app.js";

const NODE_TYPE = "KandinskyVideoTextEncode";
const PREVIEW_NAME = "preview_text"; // the name the frontend's helpers give the preview widget

function showReport(node, output) {
  const preview = window.comfyAPI?.textPreviewWidgets;
  if (!node || !output?.text) return;
  if (!preview?.addTextPreviewWidgets || !preview?.updateTextPreviewWidgets) {
    // an older frontend keeps its progress-text widget; if neither is there, say so
    if (!node.widgets?.some((w) => w?.type === "progressText")) {
      console.warn("[Kandinsky Video] this frontend offers no text preview widget: the token report is in " +
                   "the queue history and the server log only", output.text);
    }
    return;
  }
  if (!node.widgets?.some((w) => w.name === PREVIEW_NAME)) {
    preview.addTextPreviewWidgets(node);
    const [width, height] = node.computeSize?.() ?? [];
    if (height && node.size) node.setSize?.([Math.max(node.size[0], width), Math.max(node.size[1], height)]);
  }
  preview.updateTextPreviewWidgets(node, output);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "KandinskyVideo.TextEncodeTokenReport",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      showReport(this, output);
    };
  },
  // Newer frontends restore node outputs when a workflow tab is shown again.
  onNodeOutputsUpdated(outputs) {
    for (const [id, output] of Object.entries(outputs ?? {})) {
      const node = app.graph?.getNodeById?.(id);
      if (node?.type === NODE_TYPE) showReport(node, output);
    }
  },
});
