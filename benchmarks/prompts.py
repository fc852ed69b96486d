"""The short chat prompts the load and overhead benchmarks send (one per built-in text expert and
two more), shared so that every benchmark measures the same requests."""

PROMPTS = [
    "Write a Python function that merges two sorted lists",
    "If 3 apples cost $1.20, how much do 10 apples cost?",
    "Who discovered penicillin and when?",
    "Do you think machines can be conscious?",
    "Fix the off-by-one error in my loop",
    "What is the derivative of x^3 + 2x?",
]
