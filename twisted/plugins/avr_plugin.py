"""The ``twistd avr`` plugin: the only thing twistd needs to find to run avr."""

from twisted.application.service import ServiceMaker

avr = ServiceMaker(
    "AVR",
    "avr.tap",
    "Bridge Asterisk AudioSocket calls to speech-to-speech agents; control calls over ARI",
    "avr",
)
