"""
course: the exercises of notebook.ipynb, section "Try it yourself".

    from course import exercises
    exercises.check_leave_one_out(my_function)   # prints PASS or FAIL, returns True or False

exercises.py holds one check per exercise: it calls the student's function and the project's own
function (nanorgra.py) on the same seeded random tensors and compares them. solutions.py holds one
answer per exercise, written from the equations (it never calls nanorgra), so that a check of it is
a real comparison of two implementations. A function that still raises NotImplementedError (the
stub the notebook ships) is reported as unanswered, and the answer in solutions.py is checked in
its place: the shipped notebook runs clean.
"""
