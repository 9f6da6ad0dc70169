"""The web demo (`moe-audio app`): a local Gradio page that answers a question about a clip and shows how the MoE
adapter routed the clip's audio tokens. `routing` draws the picture (no Gradio needed); `page` builds the page."""
