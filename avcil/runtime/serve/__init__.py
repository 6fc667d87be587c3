"""`avcil serve`: the device's web page. Live view (the camera with the current label drawn on it, as MJPEG; the
decision feed, as server-sent events; per-stage latency; the recent events and the one under way), adding a class
recorded from the device's own camera and microphone, "not X" on a decision or an event (avcil.runtime.background
`learn_not` with the windows it decided), the model's versions and rollback; every request behind a token. With
--mqtt the events also go to a broker, as `avcil run --mqtt` sends them (avcil.runtime.mqtt).

One module per job:
- service.py: DeviceService, the device behind the page (recogniser, live input, learning job, corrections);
- logs.py: the recent decisions, their windows' features and the events it keeps; job.py: the learning job;
- learning.py: a new class learnt in its own niced, thread-capped process, as `avcil learn` is;
- auth.py: the token (read_token) and the gate every request passes (TokenGate);
- app.py: the Starlette application, its routes as named handlers (build_app);
- command.py: the command, its flags and the server (add_parser).
"""

from avcil.runtime.serve.auth import TOKEN_COOKIE, TokenGate, read_token  # noqa: F401
from avcil.runtime.serve.command import add_parser  # noqa: F401
from avcil.runtime.serve.job import Busy, Gone, LearnJob  # noqa: F401
from avcil.runtime.serve.logs import DecisionLog, EventLog, WindowFeatures  # noqa: F401
from avcil.runtime.serve.service import MAX_CLIPS, DeviceService  # noqa: F401
