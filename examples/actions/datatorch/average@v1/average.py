from datatorch import get_input, set_output

set_output("average", (get_input("a") + get_input("b")) / 2)
