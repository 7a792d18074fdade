"""serve's generation worker: one thread owns the model and answers queued requests in order, batching the
waiting non-streaming requests that share their sampling (webtune.cli.serve is the HTTP side).

    engine = Engine(chat)                                 # starts the worker
    job = engine.submit(Request(conversation, Sampling(), stream=False))
    answer = job.result.result()                          # an Answer (webtune.models.chat)
    engine.close()

A batch is left-padded, each request its own row, so each gets the answer it would get alone; a streaming
request or one with a seed runs alone. The worker survives a failed generation:
every request of that batch gets the exception.
"""

import concurrent.futures
import dataclasses
import queue
import threading
from collections import deque

from webtune.models.chat import Sampling
from webtune.models.inference import ChatModel

MAX_BATCH = 8  # waiting requests answered in one batch at most (8 x 64 tokens on 2 CPU cores: ~2x one)


@dataclasses.dataclass
class Request:
    conversation: list[dict]
    sampling: Sampling
    stream: bool


@dataclasses.dataclass
class Job:
    request: Request
    result: concurrent.futures.Future  # an Answer (non-streaming)
    pieces: queue.Queue | None = None  # streaming: text pieces, then the Answer, or an exception


class Engine:
    """The one generation worker and its queue."""

    def __init__(self, chat: ChatModel, *, max_batch: int = MAX_BATCH):
        self.chat, self.max_batch = chat, max_batch
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.held: deque[Job] = deque()  # taken from the queue but not batchable with the current batch
        self.worker = threading.Thread(target=self.run, name="serve-generate", daemon=True)
        self.worker.start()

    def submit(self, request: Request) -> Job:
        job = Job(request, concurrent.futures.Future(), queue.Queue() if request.stream else None)
        self.jobs.put(job)
        return job

    def close(self) -> None:
        self.jobs.put(None)
        self.worker.join(timeout=30)

    def next_job(self, block: bool) -> Job | None:
        if self.held:
            return self.held.popleft()
        return self.jobs.get() if block else self.jobs.get_nowait()

    def run(self) -> None:
        while True:
            job = self.next_job(block=True)
            if job is None:
                return
            if job.request.stream or job.request.sampling.seed is not None:
                self.run_alone(job)
                continue
            batch = [job]
            while len(batch) < self.max_batch:
                try:
                    other = self.next_job(block=False)
                except queue.Empty:
                    break
                if other is None:
                    self.jobs.put(None)  # close after this batch
                    break
                if other.request.stream or other.request.sampling != job.request.sampling:
                    self.held.append(other)
                    break
                batch.append(other)
            try:
                answers = self.chat.reply([j.request.conversation for j in batch], job.request.sampling)
            except Exception as e:  # noqa: BLE001 -- every waiting request gets the error, the worker goes on
                for j in batch:
                    j.result.set_exception(e)
                continue
            for j, answer in zip(batch, answers, strict=True):
                j.result.set_result(answer)

    def run_alone(self, job: Job) -> None:
        request = job.request
        try:
            if job.pieces is None:
                job.result.set_result(self.chat.reply([request.conversation], request.sampling)[0])
                return
            for piece in self.chat.stream(request.conversation, request.sampling, done=job.result.set_result):
                job.pieces.put(piece)
            job.pieces.put(job.result.result())
        except Exception as e:  # noqa: BLE001 -- reported to the client, the worker goes on
            if not job.result.done():
                job.result.set_exception(e)
            if job.pieces is not None:
                job.pieces.put(e)
