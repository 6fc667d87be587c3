"""Plain helpers shared by the test modules (fixtures stay in tests/conftest.py), one module per topic:

- waiting: polling until a deadline (`wait_until`), whether a port is listening, a free port;
- media: the toy world's clips and tones, the decoder tests' videos, a tone played into the PulseAudio microphone;
- commands: the avcil command line in a subprocess or in process, and what a user would object to in its answer;
- models: small model dirs, heads and checkpoints made in a second, and the closed-form readout in numpy;
- servers: the ffmpeg MJPEG camera, a Mosquitto broker and a subscriber to it, and `avcil serve` in a subprocess.

Split by topic because one file would hold some 600 lines of unrelated helpers; test modules import what they use
from here and never from each other."""
