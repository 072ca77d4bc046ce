"""The Practice tab: the bot asks one of the posts' interview questions, grades the typed answer against
the post's answer (rag.practice.Practice), shows what was covered and missed, and asks the next one; a
chart shows progress per post."""

from __future__ import annotations

import logging

import gradio as gr

from .. import render
from ..errors import RagError
from ..practice import Practice

log = logging.getLogger(__name__)


def short_title(title: str) -> str:
    """"Random Forest: Interview Questions & Answers" -> "Random Forest"."""
    head = title.split(":")[0].strip()
    return head if len(head) <= 40 else head[:39] + "…"


def progress_figure(stats):
    """Per post: the mean of the last scores of the questions tried, with how many are mastered."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * max(len(stats), 3) + 0.9), dpi=100)
    names = [short_title(s.post_title) for s in stats][::-1]
    means = [s.mean_score or 0 for s in stats][::-1]
    colours = ["#15803d" if (s.mean_score or 0) >= 60 else "#b45309" for s in stats][::-1]
    ax.barh(names, means, color=colours)
    for y, s in enumerate(stats[::-1]):
        label = (f"{s.mean_score:.0f} · {s.mastered}/{s.questions} mastered" if s.attempted else
                 f"not tried · {s.questions} questions")
        ax.text(min((s.mean_score or 0) + 2, 60), y, label, va="center", fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("mean of the latest score of each question tried (0-100)")
    ax.tick_params(axis="y", labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    plt.close(fig)
    return fig


class PracticeUI:
    def __init__(self, practice: Practice):
        self.practice = practice

    def post_choices(self) -> list[tuple[str, str]]:
        try:
            posts = self.practice.posts()
        except RagError:
            posts = []
        return [("Any post (what you need most)", "")] + [(t, g) for g, t in posts]

    def next_question(self, post: str, current: str | None):
        """The next question (due, then new; never the one just asked). (question, id, answer, result)"""
        try:
            q = self.practice.next_question(post or None, exclude=[current] if current else ())
        except RagError as e:
            gr.Warning(str(e), duration=6)
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return render.question_markdown(q), q.id, "", gr.HTML("", visible=False)

    def grade(self, question_id: str | None, answer: str):
        """(result, progress chart): nothing is recorded for an invalid answer."""
        if not question_id:
            gr.Warning("Press “New question” first.", duration=4)
            return gr.skip(), gr.skip()
        try:
            g = self.practice.grade(question_id, answer)
        except RagError as e:
            gr.Warning(str(e), duration=6)
            return gr.skip(), gr.skip()
        return gr.HTML(render.grade_html(g), visible=True), progress_figure(self.practice.stats())

    def progress(self):
        try:
            return progress_figure(self.practice.stats())
        except RagError as e:
            log.warning("practice progress unavailable: %s", e)
            return None

    def build(self) -> None:
        gr.Markdown("The bot asks one of the posts' interview questions; answer in your own words and see which "
                    "of the post's key points you covered. Questions you miss come back sooner.",
                    elem_classes="meta")
        with gr.Row(equal_height=True):
            post = gr.Dropdown(self.post_choices(), value="", label="Questions from", scale=4, elem_id="practice-post")
            new = gr.Button("New question", variant="primary", scale=1, min_width=120, elem_id="practice-new")
        question = gr.Markdown("Press **New question** to start.", elem_id="practice-question")
        answer = gr.Textbox(label="Your answer", lines=5, max_lines=14, elem_id="practice-answer",
                            placeholder="Answer as you would in the interview: the idea, why, and a trade-off.")
        with gr.Row():
            grade = gr.Button("Grade my answer", variant="primary", elem_id="practice-grade")
            next_q = gr.Button("Next question", elem_id="practice-next")
        result = gr.HTML(visible=False, elem_id="practice-result")
        with gr.Accordion("Progress per post", open=False, elem_id="practice-progress") as progress:
            chart = gr.Plot(show_label=False, elem_id="practice-chart")
        current = gr.State(None)

        quick = dict(show_progress="hidden", api_visibility="private")
        for button in (new, next_q):
            button.click(self.next_question, inputs=[post, current], outputs=[question, current, answer, result],
                         concurrency_id="practice", concurrency_limit=2, **quick)
        grade_args = dict(fn=self.grade, inputs=[current, answer], outputs=[result, chart], concurrency_id="practice",
                          show_progress="minimal", api_visibility="private")
        grade.click(**grade_args)
        progress.expand(self.progress, outputs=chart, **quick)
