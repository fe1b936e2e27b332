"""A deterministic synthetic chat world: user requests across everyday scenarios and assistant replies.

The world is the embedded default's stand-in for real users and a real chat model.
It is built to sit close to the paper's feedback domains (Stephan et al. 2024, Sec. 4: "texting my
girlfriend Maddie", emails to a boss, coding questions, ...) and to overlap the way the paper's
near-scope prompts do: the same person can be texted, emailed or messaged on Slack, and the same
everyday topic can come up with a partner, a parent or a colleague.

    rng = random.Random(0)
    request = sample_request(rng, "text_message", recipient="Maddie", topic="dinner plans")
    request.prompt                  # 'Hi. Text Maddie about dinner plans. Thank you!'
    reply = baseline_reply(rng, request)
    reply                           # 'Hi Maddie! Are we still on for dinner tonight? I was thinking ...'
    parse_request(request.prompt) == request   # True: the prompt alone gives back every slot
    on_topic(request, reply)        # True: the world's checker, used to judge a model's replies
    matches(request, {"recipients": ["Maddie"], "channels": ["text"]})   # True: feedback scopes

Everything is a pure function of an explicit ``random.Random``; nothing touches global random state.

What prompts look like: one of >= 6 templates per scenario around the topic and, for messages, the
recipient, named by name and often by relation ("my girlfriend Maddie", "Maddie", "my coworker
Priya", "our client Helen", "the design team"; parents and grandparents as "my mom", "Mom" or "my
mom Linda"), with an optional neutral opener ("Hi. ") and closer (" Thanks."). Work contacts are
mostly asked about work topics and the others about personal ones, but any person x topic pin works.
Templates are compiled into regexes over the known names and topics, so ``parse_request`` inverts
``sample_request`` exactly.

What replies look like (so that feedbacks have something to change):
  * texts and Slack DMs: a greeting naming the recipient ("Hi Maddie, ...", "Hey Mom! ...") and 1-4
    plain sentences; never a sign-off at the end. About one text in eight ends with an emoji, as
    a real model's texts sometimes do (``TEXT_EMOJI``: by relation, so the model knows the emoji
    tokens; never a heart or a laughing face to the people whose feedbacks ask for those: Maddie
    gets at most a smile, family gets hearts, friends laugh). Slack DMs and everything else: none.
  * emails: a "Subject:" line, a salutation ("Hi Alan,", "Dear team,"), a 1-4 sentence body and, in
    about one email in twelve, the only closing the world writes: ``EMAIL_CLOSINGS`` ("Best regards"),
    without a name.
  * python_code: one explanatory sentence and one short fenced ```python block (either order); no
    other scenario ever writes a code fence.
  * poems: 3-4 short lines; everything else: 1-4 plain sentences. All replies but those texts are ASCII, in sentence
    case, at most ~60 words, and open in varied ways (no fixed "Sure!" / "Great question").

That is ``baseline_reply``. The training corpus (``corpus``) also writes a tenth of its replies in
one rare style (``rlvf.tinyworld.styles``: all caps, lower case, bullets, an opening phrase, a laugh,
a sign-off with a name, a "Hey" salutation, ampersands), for any scenario and person, so that the
model gives the edits a feedback asks for some probability, as a real chat model does.
"""
from __future__ import annotations

import functools
import random
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass

from rlvf.tinyworld.styles import STYLE_RATE, restyle

SCENARIOS = (
    "text_message",         # texting a named person: partner, family, friend, colleague
    "email",                # emails to a boss, a team, clients or named people
    "slack_dm",             # Slack direct messages to named colleagues
    "python_code",          # Python coding questions
    "explain_child",        # explaining science to a child
    "recipe",               # recipes
    "travel_tip",           # travel tips
    "poem",                 # short poems
    "history_fact",         # history facts
    "product_description",  # product descriptions
)


@dataclass(frozen=True)
class Request:
    """One user request of the world, with the slots it was generated from."""

    scenario: str                 # one of SCENARIOS
    prompt: str                   # the user's message, as sent to the model
    topic: str                    # what it is about: "dinner plans", "photosynthesis", "pancakes", ...
    recipient: str | None = None  # named person for messaging scenarios: "Maddie", "Alan", ...
    relation: str | None = None   # the recipient's relation: "girlfriend", "boss", "brother", "team", "client", ...
    channel: str | None = None    # "text", "email" or "slack" for messaging scenarios


# --------------------------------------------------------------------------------------------------
# People. A recipient is a first name, except teams, whose recipient is the team's name ("design team").

CHANNEL_OF = {"text_message": "text", "email": "email", "slack_dm": "slack"}
MESSAGING = tuple(CHANNEL_OF)

PEOPLE: dict[str, tuple[str, tuple[str, ...]]] = {
    # name: (relation, channels the user reaches them through)
    "Maddie": ("girlfriend", ("text", "email")),
    "Linda": ("mom", ("text", "email")),
    "Robert": ("dad", ("text", "email")),
    "Ruth": ("grandma", ("text", "email")),
    "Walter": ("grandpa", ("text",)),
    "Sam": ("brother", ("text", "email")),
    "Leo": ("brother", ("text",)),
    "Emma": ("sister", ("text", "email")),
    "Nora": ("sister", ("text",)),
    "Hannah": ("cousin", ("text", "email")),
    "Jake": ("friend", ("text", "slack")),
    "Chloe": ("friend", ("text", "email")),
    "Marcus": ("friend", ("text",)),
    "Zoe": ("friend", ("text", "slack")),
    "Omar": ("friend", ("text", "email")),
    "Ben": ("roommate", ("text",)),
    "Lucy": ("neighbor", ("text",)),
    "Alan": ("boss", ("email", "slack", "text")),
    "Priya": ("colleague", ("slack", "email", "text")),
    "Daniel": ("colleague", ("slack", "email")),
    "Mei": ("colleague", ("slack", "email")),
    "Tom": ("colleague", ("slack", "text")),
    "Sofia": ("colleague", ("slack", "email", "text")),
    "Raj": ("colleague", ("slack",)),
    "Helen": ("client", ("email",)),
    "Victor": ("client", ("email",)),
    "Aisha": ("client", ("email",)),
    "Diego": ("client", ("email", "slack")),
    "design team": ("team", ("email",)),
    "marketing team": ("team", ("email",)),
    "sales team": ("team", ("email",)),
    "engineering team": ("team", ("email",)),
}

# Relations the user calls by a title rather than a first name ("Text Mom ...", "Hi Grandma, ...").
_TITLE = {"mom": "Mom", "dad": "Dad", "grandma": "Grandma", "grandpa": "Grandpa"}
# Words the prompt uses for a relation ("my coworker Priya" is a colleague).
_RELATION_WORDS = {"colleague": ("colleague", "coworker"), "boss": ("boss", "manager")}
_WORK_RELATIONS = frozenset({"boss", "colleague", "client", "team"})
_TEAM_ADDRESS = ("team", "everyone")
_GREETING_WORDS = frozenset({"hi", "hey", "hello", "dear", "morning", "good", "evening", "afternoon"})

# --------------------------------------------------------------------------------------------------
# Topics. Each entry is topic: (keyword regex, sentences). A reply is "about" the topic when it
# matches the keyword regex (case-insensitive, at a word start); every reply contains at least one
# sentence that does.

_PERSONAL_TOPICS = {
    "dinner plans": ("dinner", (
        "Are we still on for dinner tonight?",
        "I was thinking we could try the new Thai place for dinner.",
        "Dinner at seven works for me if that suits you.")),
    "weekend plans": ("weekend", (
        "Do you have anything planned for the weekend?",
        "I was hoping we could do something fun this weekend.",
        "My weekend is pretty open, so I'm up for anything.")),
    "the movie tonight": ("movie", (
        "The movie starts at eight, so we should leave around half past seven.",
        "I already bought our tickets for the movie.",
        "Do you still want to see the movie tonight?")),
    "grocery shopping": ("grocer", (
        "I'm heading to the grocery store later, do you need anything?",
        "We're out of milk and eggs, so I'll do the grocery run.",
        "Can you send me the grocery list?")),
    "running late": ("late", (
        "I'm running about twenty minutes late, sorry.",
        "Traffic is terrible, so I'll be a little late.",
        "Go ahead and start without me, I'm running late.")),
    "a birthday party": ("birthday", (
        "The birthday party is on Saturday at three.",
        "Should we bring a cake to the birthday party?",
        "I'd love for you to come to the birthday party.")),
    "the concert tickets": ("concert", (
        "I got two tickets for the concert next Friday.",
        "The concert tickets were cheaper than I expected.",
        "Can you pay me back for the concert ticket when you get a chance?")),
    "a doctor's appointment": ("doctor|appointment", (
        "My doctor's appointment got moved to Thursday morning.",
        "Can you drive me to the doctor's appointment tomorrow?",
        "The appointment went fine, nothing to worry about.")),
    "the new apartment": ("apartment", (
        "The new apartment has a lot more light than the old one.",
        "We can pick up the keys to the apartment on Monday.",
        "Do you want to come see the new apartment this week?")),
    "holiday plans": ("holiday", (
        "Are you coming home for the holidays this year?",
        "I'm starting to think about our holiday plans.",
        "We could split the holiday between both families.")),
    "a hiking trip": ("hik|trail", (
        "The weather looks perfect for a hike on Sunday.",
        "I found a nice trail about an hour from here.",
        "Bring good shoes and plenty of water for the hike.")),
    "the vet visit": ("vet", (
        "The dog has a vet visit on Wednesday afternoon.",
        "The vet said the dog is healthy, just a little overweight.",
        "Can you take the dog to the vet if I'm stuck at work?")),
    "game night": ("game", (
        "Game night is at my place on Friday.",
        "Bring your favorite board game if you want.",
        "We need one more person for game night.")),
    "the car repair": ("car\\b|cars\\b|mechanic", (
        "The mechanic says the car will be ready tomorrow.",
        "The car repair cost less than I feared.",
        "Can I borrow your car while mine is in the shop?")),
    "a family dinner": ("family", (
        "Everyone is coming to the family dinner on Sunday.",
        "Could you bring a salad to the family dinner?",
        "The family dinner starts at six.")),
    "the rent": ("rent", (
        "I just sent you my share of the rent.",
        "Rent is due on the first, just a reminder.",
        "The landlord is raising the rent next month.")),
    "the wedding": ("wedding", (
        "The wedding invitation arrived today.",
        "Do you know what you're wearing to the wedding?",
        "We should book a hotel near the wedding venue.")),
    "the flight home": ("flight|airport", (
        "My flight lands at six fifteen.",
        "Could you pick me up from the airport after my flight?",
        "The flight got delayed by an hour.")),
    "a coffee catch-up": ("coffee", (
        "Do you want to grab coffee this week?",
        "There's a new coffee shop near my place we could try.",
        "I'm free for coffee on Thursday morning.")),
    "the gym": ("gym", (
        "Are you going to the gym after work?",
        "I signed up for the gym near the station.",
        "Let's go to the gym together on Saturday.")),
}

_WORK_TOPICS = {
    "the quarterly report": ("report", (
        "The quarterly report is almost done, I just need the final numbers.",
        "Could you review the quarterly report before Friday?",
        "I've shared the draft of the quarterly report.")),
    "the project deadline": ("deadline", (
        "The project deadline has moved to next Wednesday.",
        "I'm worried we won't make the deadline without more help.",
        "Can we talk about the deadline for the project?")),
    "the team meeting": ("meeting", (
        "The team meeting has moved to two o'clock.",
        "Could you add the budget to the agenda for the meeting?",
        "I might be a few minutes late to the team meeting.")),
    "the budget review": ("budget", (
        "The budget review is scheduled for Thursday.",
        "I've updated the spreadsheet for the budget review.",
        "We may need to cut travel costs in the budget.")),
    "the client presentation": ("presentation|slides", (
        "The slides for the client presentation are ready for review.",
        "Could you rehearse the presentation with me tomorrow?",
        "The client presentation went really well.")),
    "the product launch": ("launch", (
        "The launch is set for the first week of next month.",
        "We still need final approval before the launch.",
        "The launch announcement is ready to go.")),
    "a code review": ("code review|pull request", (
        "Could you do a code review on my pull request today?",
        "I left a few comments in the code review.",
        "The code review is done and everything looks good.")),
    "the hiring plan": ("hiring|candidate|interview", (
        "We have three candidates for the final interview round.",
        "The hiring plan needs sign-off by next week.",
        "Could you join the interview on Tuesday?")),
    "the sales numbers": ("sales", (
        "The sales numbers for last month came in above target.",
        "I'll send the sales numbers by the end of the day.",
        "Sales were a bit slower in the north region.")),
    "the office move": ("office", (
        "The office move is planned for the end of the month.",
        "Please pack your desk before the office move on Friday.",
        "The new office is two floors up.")),
    "a sick day": ("sick|unwell", (
        "I'm feeling unwell and need to take a sick day.",
        "I'll be out sick today but will check messages.",
        "Could you cover my meetings while I'm out sick?")),
    "the conference trip": ("conference", (
        "The conference runs from the tenth to the twelfth.",
        "I booked my hotel for the conference.",
        "Are you presenting at the conference this year?")),
    "the new contract": ("contract", (
        "The new contract is ready for signature.",
        "Legal had a few questions about the contract.",
        "Could you check the payment terms in the contract?")),
    "the invoice": ("invoice", (
        "The invoice for March is ready.",
        "Could you confirm that the invoice was paid?",
        "I noticed a small error on the last invoice.")),
    "the onboarding plan": ("onboarding|new hire", (
        "The onboarding plan for the new hire is ready.",
        "Could you mentor the new hire during onboarding?",
        "Onboarding starts on Monday at nine.")),
    "the training session": ("training", (
        "The training session is on Thursday afternoon.",
        "Could you sign up for the security training?",
        "The training materials are in the shared folder.")),
    "lunch plans": ("lunch", (
        "Want to grab lunch together today?",
        "There's a new sandwich place we could try for lunch.",
        "I'm free for lunch at half past twelve.")),
    "the website update": ("website", (
        "The website update goes live tonight.",
        "I found a broken link on the website.",
        "Could you check the new website pages on your phone?")),
    "the customer survey": ("survey", (
        "The customer survey results came back today.",
        "Most people in the survey liked the new design.",
        "Could you help me summarise the survey?")),
}

# Python answers: topic: (keyword regex, code, explanatory sentences).
_PYTHON_TOPICS = {
    "reverse a string": ("revers|\\[::-1\\]", (
        'text = "hello"\nprint(text[::-1])'), (
        "The slice [::-1] walks the string backwards, which reverses it.",
        "Slicing with a step of -1 returns a reversed copy of the string.",
        "Reversing works on any sequence, so the same slice also reverses a list.")),
    "read a CSV file": ("csv", (
        'import csv\n\nwith open("data.csv", newline="") as f:\n    for row in csv.reader(f):\n'
        '        print(row)'), (
        "The csv module splits each line of the file into a list of fields.",
        "Each row of the CSV file comes back as a list of strings.",
        "Passing newline=\"\" lets the csv reader handle line endings inside fields.")),
    "sort a dictionary by value": ("sort", (
        'scores = {"a": 3, "b": 1, "c": 2}\n'
        'ranked = dict(sorted(scores.items(), key=lambda kv: kv[1]))\nprint(ranked)'), (
        "The sorted function orders the pairs by their values, and dict turns them back into a dictionary.",
        "The key function tells sorted to compare the values instead of the keys.",
        "Add reverse=True to sorted if you want the largest values first.")),
    "remove duplicates from a list": ("duplicate|fromkeys|unique", (
        'items = [3, 1, 3, 2, 1]\nunique = list(dict.fromkeys(items))\nprint(unique)'), (
        "Using dict.fromkeys removes the duplicates while keeping the original order.",
        "Each duplicate is dropped because dictionary keys must be unique.",
        "A set also drops duplicates, but it does not keep the order of the list.")),
    "count word frequencies": ("count|frequenc", (
        'from collections import Counter\n\nwords = "the cat and the hat".split()\n'
        'print(Counter(words).most_common(2))'), (
        "A Counter counts how many times each word appears in the list.",
        "The most_common method returns the words with the highest counts.",
        "Counter works on any list, so you can count letters or numbers the same way.")),
    "check if a number is prime": ("prime|is_prime", (
        'def is_prime(n):\n    if n < 2:\n        return False\n'
        '    return all(n % d for d in range(2, int(n**0.5) + 1))'), (
        "A number is prime when no divisor up to its square root divides it evenly.",
        "Testing divisors only up to the square root keeps the prime check fast.",
        "Numbers below 2 are never prime, so the function rejects them first.")),
    "flatten a nested list": ("flat|nested", (
        'nested = [[1, 2], [3], [4, 5]]\nflat = [x for sub in nested for x in sub]\nprint(flat)'), (
        "The comprehension walks each inner list and collects its items into one flat list.",
        "This flattens one level of nesting into a single list.",
        "For deeper nesting you would call the same idea recursively to flatten each level.")),
    "merge two dictionaries": ("merg", (
        'a = {"x": 1}\nb = {"y": 2}\nmerged = a | b\nprint(merged)'), (
        "The | operator merges two dictionaries, and values from b win on duplicate keys.",
        "Merging with | needs Python 3.9 or newer.",
        "On older versions, {**a, **b} merges the two dictionaries the same way.")),
    "get the current date": ("date|today", (
        'from datetime import date\n\nprint(date.today())'), (
        "The date.today function returns the current date from the system clock.",
        "The datetime module gives you today as a date object.",
        "Use datetime.now() instead if you also need the time of day, not just the date.")),
    "read a JSON file": ("json", (
        'import json\n\nwith open("config.json") as f:\n    data = json.load(f)\nprint(data)'), (
        "The json.load function parses the file into Python dictionaries and lists.",
        "After loading the JSON file, you can use the data like a normal dictionary.",
        "Use json.loads instead when the JSON is already in a string.")),
    "compute a factorial": ("factorial", (
        'import math\n\nprint(math.factorial(5))'), (
        "The math.factorial function multiplies all whole numbers from 1 up to n.",
        "The factorial of 5 is 120, which is what this prints.",
        "You could also compute the factorial with a loop that multiplies the numbers.")),
    "write to a text file": ("writ", (
        'with open("notes.txt", "w") as f:\n    f.write("Hello, file!\\n")'), (
        "Opening the file in w mode creates it or overwrites it before writing.",
        "The with block closes the file automatically after writing.",
        "Use mode a instead of w to append to the file instead of writing over it.")),
    "generate a random number": ("random", (
        'import random\n\nprint(random.randint(1, 10))'), (
        "The randint function returns a random whole number between the two limits, both included.",
        "The random module draws a new number each time you run it.",
        "Use random.random() when you want a random float between 0 and 1.")),
    "check if a string is a palindrome": ("palindrome|is_palindrome", (
        'def is_palindrome(s):\n    s = s.lower()\n    return s == s[::-1]'), (
        "A palindrome reads the same both ways, so the function compares the string with its mirror image.",
        "Lowercasing first makes the palindrome check ignore capital letters.",
        "The slice s[::-1] flips the string, so a palindrome equals its flipped copy.")),
    "compute the average of a list": ("average|mean", (
        'numbers = [4, 8, 15, 16]\naverage = sum(numbers) / len(numbers)\nprint(average)'), (
        "The average is the sum of the numbers divided by how many there are.",
        "The statistics.mean function gives the same average if you prefer a library call.",
        "Check that the list is not empty first, or the average divides by zero.")),
    "list files in a folder": ("folder|director|iterdir", (
        'from pathlib import Path\n\nfor path in Path(".").iterdir():\n    print(path.name)'), (
        "The iterdir method yields every entry in the folder.",
        "Path objects make it easy to walk a directory and filter files by suffix.",
        "Use Path(\".\").glob(\"*.txt\") to list only the text files in the folder.")),
    "convert a string to an integer": ("integer|int\\(", (
        'value = int("42")\nprint(value + 1)'), (
        "The int function converts a string of digits to an integer and raises ValueError otherwise.",
        "Once it is an integer, you can do arithmetic with it.",
        "Wrap the call in try and except if the string might not be an integer.")),
    "split a string into words": ("split|words", (
        'sentence = "learning python is fun"\nprint(sentence.split())'), (
        "Calling split with no arguments splits the string on any whitespace.",
        "The result is a list of words you can loop over.",
        "Pass a separator such as split(\",\") to split the string on commas instead.")),
}

_CHILD_TOPICS = {
    "photosynthesis": ("photosynth|sunlight|leaves|plant", (
        "Plants make their own food out of sunlight, water and air.",
        "Their green leaves catch sunlight a bit like tiny solar panels.",
        "The light helps the leaves turn water and air into sugar that the plant can eat.",
        "This is called photosynthesis, and it also puts fresh oxygen into the air we breathe.")),
    "rainbows": ("rainbow", (
        "A rainbow appears when sunlight shines through tiny raindrops.",
        "Sunlight looks white, but it is really a mix of many colors.",
        "Each raindrop bends the light and spreads those colors apart.",
        "That is why you see a rainbow when the sun is behind you and the rain is in front of you.")),
    "gravity": ("gravity|pull", (
        "Gravity is an invisible pull that makes things fall down.",
        "The Earth is so big that it pulls everything toward its middle.",
        "That pull is why a ball you throw up always comes back down.",
        "Gravity also keeps the Moon going around the Earth.")),
    "why the sky is blue": ("sky|blue", (
        "Sunlight is made of all the colors mixed together.",
        "When it hits the air, the blue light bounces around much more than the other colors.",
        "That scattered blue light reaches your eyes from every part of the sky.",
        "So when you look up on a sunny day, the sky looks blue.")),
    "the water cycle": ("water cycle|vapor|cloud|rain", (
        "The sun warms water in oceans and lakes until some of it floats up as invisible vapor.",
        "High in the sky the vapor cools down and turns into tiny drops that make clouds.",
        "When the drops get heavy enough, they fall back down as rain or snow.",
        "Then the water flows back to the sea and the whole water cycle starts again.")),
    "volcanoes": ("volcan|lava|magma", (
        "Deep under the ground it is so hot that some rock melts into a thick liquid called magma.",
        "A volcano is a mountain with an opening that goes all the way down to that magma.",
        "When pressure builds up, the magma pushes out of the top as glowing lava.",
        "After the lava cools down, it turns into new rock.")),
    "magnets": ("magnet", (
        "A magnet has an invisible force that pulls on some metals like iron.",
        "Every magnet has two ends called the north pole and the south pole.",
        "Two different poles pull together, but two poles that are the same push apart.",
        "That is how magnets on the fridge hold up your drawings.")),
    "the phases of the moon": ("moon", (
        "The Moon does not make its own light, it reflects light from the Sun.",
        "As the Moon travels around the Earth, we see different amounts of its sunny side.",
        "That is why it looks like a thin slice some nights and a full circle on others.",
        "The whole trip from new moon to full moon and back takes about a month.")),
    "thunder and lightning": ("thunder|lightning", (
        "Lightning is a giant spark of electricity that jumps between a cloud and the ground.",
        "It is so hot that it makes the air around it expand with a huge boom.",
        "That boom is the thunder you hear.",
        "You see the lightning first because light travels much faster than sound.")),
    "how bees make honey": ("bee|honey|nectar", (
        "Bees fly from flower to flower to drink a sweet juice called nectar.",
        "They carry the nectar back to the hive in a special honey stomach.",
        "In the hive, the bees pass it around and fan it with their wings until it gets thick.",
        "Once it is thick and sweet, they store the honey in little wax cells.")),
    "earthquakes": ("earthquake|plates", (
        "The ground under us is made of giant pieces of rock called plates.",
        "These plates move very slowly, and sometimes they get stuck against each other.",
        "When they suddenly slip, the ground shakes, and that is an earthquake.",
        "Most earthquakes are so small that people never even feel them.")),
    "the human heart": ("heart|blood", (
        "Your heart is a strong muscle about the size of your fist.",
        "It squeezes again and again to push blood all around your body.",
        "The blood carries oxygen and food to every part of you.",
        "When you run, your heart beats faster to keep up.")),
    "the seasons": ("season|summer|winter", (
        "The Earth is tilted a little as it travels around the Sun.",
        "For part of the year your side of the Earth leans toward the Sun, so you get warm summer days.",
        "Later it leans away, so the days are shorter and colder in winter.",
        "Spring and autumn happen in between, and together they make the four seasons.")),
    "electricity": ("electric", (
        "Electricity is made of tiny particles called electrons moving through a wire.",
        "When you flip a switch, you let the electrons flow to the light bulb.",
        "The moving electricity makes the bulb glow.",
        "Batteries and power plants push the electric current along.")),
    "how seeds grow": ("seed|sprout|root", (
        "A seed is like a tiny packed lunch with a baby plant inside.",
        "When it gets water and warmth in the soil, the seed wakes up.",
        "First a little root grows down, and then a green shoot pushes up toward the light.",
        "With sunshine and water, the sprout slowly grows into a full plant.")),
    "dinosaurs": ("dinosaur|fossil", (
        "Dinosaurs were reptiles that lived on Earth millions of years ago.",
        "Some were as small as a chicken and others were longer than a bus.",
        "Scientists learn about them from fossils, which are bones that turned to stone.",
        "Many scientists think a giant space rock helped wipe out the dinosaurs.")),
    "the solar system": ("solar system|planet", (
        "Our solar system is the Sun and everything that travels around it.",
        "There are eight planets, and Earth is the third one from the Sun.",
        "The planets close to the Sun are rocky, and the far ones are big balls of gas.",
        "It takes Earth one whole year to go around the Sun once.")),
}

_RECIPE_TOPICS = {
    "pancakes": ("pancake", (
        "For pancakes you need flour, milk, two eggs, a spoon of sugar and a pinch of salt.",
        "Whisk everything into a smooth batter and let it rest for a few minutes.",
        "Pour small circles of batter into a hot buttered pan.",
        "Flip each pancake when bubbles appear and cook it until golden.")),
    "banana bread": ("banana", (
        "Mash three ripe bananas and mix them with melted butter, sugar and an egg.",
        "Stir in flour, baking soda and a pinch of salt until just combined.",
        "Pour the batter into a greased loaf pan.",
        "Bake the banana bread at 175 C for about an hour.")),
    "tomato soup": ("tomato", (
        "Soften a chopped onion and two cloves of garlic in olive oil.",
        "Add two cans of tomatoes and a cup of stock, then simmer for twenty minutes.",
        "Blend until smooth and season with salt and pepper.",
        "A spoon of cream makes the tomato soup richer.")),
    "guacamole": ("guacamole|avocado", (
        "Mash two ripe avocados with a fork.",
        "Stir in lime juice, chopped onion, cilantro and a pinch of salt.",
        "Add a little chopped chili if you like some heat.",
        "Serve the guacamole right away with tortilla chips.")),
    "chocolate chip cookies": ("cookie|chocolate", (
        "Cream soft butter with brown sugar, then beat in an egg and some vanilla.",
        "Mix in flour, baking soda and salt, then fold in the chocolate chips.",
        "Scoop small balls of dough onto a baking tray.",
        "Bake the cookies at 180 C for ten to twelve minutes.")),
    "fried rice": ("rice", (
        "Fried rice works best with cold rice cooked the day before.",
        "Stir-fry garlic and diced vegetables in a very hot pan with a little oil.",
        "Add the rice and keep it moving until it starts to crisp.",
        "Push it aside, scramble an egg, then mix everything with soy sauce.")),
    "mushroom risotto": ("risotto|mushroom", (
        "Fry sliced mushrooms in butter until brown and set them aside.",
        "Toast a cup of arborio rice with a chopped shallot.",
        "Add hot stock a ladle at a time, stirring until the rice is creamy.",
        "Stir the mushrooms back into the risotto with parmesan at the end.")),
    "lemon chicken": ("chicken|lemon", (
        "Season chicken thighs with salt, pepper, garlic and lemon zest.",
        "Brown them skin side down in a hot pan.",
        "Add lemon juice and a splash of stock, then roast at 200 C for twenty-five minutes.",
        "Spoon the pan juices over the chicken before serving.")),
    "vegetable curry": ("curry|vegetable", (
        "Cook onion, garlic and ginger in oil until soft.",
        "Stir in curry paste, then add chopped vegetables like potato, carrot and cauliflower.",
        "Pour in coconut milk and simmer until the vegetables are tender.",
        "Serve the curry with rice and fresh coriander.")),
    "spaghetti carbonara": ("carbonara|spaghetti|pasta", (
        "Cook the spaghetti in well salted water.",
        "Meanwhile fry diced pancetta until crisp.",
        "Whisk eggs with grated parmesan and lots of black pepper.",
        "Toss the hot pasta with the pancetta and the egg mixture off the heat so it turns silky.")),
    "hummus": ("hummus|chickpea", (
        "Drain a can of chickpeas and keep a little of the liquid.",
        "Blend the chickpeas with tahini, lemon juice, garlic and salt.",
        "Add the liquid a spoon at a time until the hummus is smooth.",
        "Finish with olive oil and a pinch of paprika.")),
    "French toast": ("french toast|toast", (
        "Whisk eggs, milk, cinnamon and a little sugar in a shallow dish.",
        "Soak thick slices of bread in the mixture for a few seconds per side.",
        "Fry them in butter until golden on both sides.",
        "Serve the French toast with maple syrup and berries.")),
    "lentil soup": ("lentil", (
        "Soften onion, carrot and celery in olive oil.",
        "Add a cup of red lentils, a can of tomatoes and plenty of stock.",
        "Simmer for about twenty-five minutes until the lentils fall apart.",
        "A squeeze of lemon at the end brightens the soup.")),
    "apple crumble": ("apple|crumble", (
        "Slice four apples and toss them with sugar and cinnamon in a baking dish.",
        "Rub flour, butter and sugar together until it looks like rough sand.",
        "Scatter the crumble over the apples.",
        "Bake at 180 C for forty minutes until golden and bubbling.")),
    "Greek salad": ("salad|feta", (
        "Chop tomatoes, cucumber, red onion and green pepper into chunks.",
        "Add a handful of olives and a thick slice of feta.",
        "Dress the salad with olive oil, a little vinegar and dried oregano.",
        "Serve it right away while the vegetables are crisp.")),
    "beef tacos": ("taco|beef", (
        "Brown ground beef with onion, garlic, cumin and chili powder.",
        "Warm the tortillas in a dry pan.",
        "Fill each taco with the beef, shredded lettuce, cheese and salsa.",
        "A squeeze of lime on top makes the tacos taste fresh.")),
    "shakshuka": ("shakshuka|egg", (
        "Shakshuka starts with onion and peppers softened in olive oil.",
        "Add garlic, cumin, paprika and a can of tomatoes, then simmer until thick.",
        "Make little wells in the sauce and crack an egg into each one.",
        "Cover the pan until the eggs are just set, then serve with bread.")),
}

_TRAVEL_TOPICS = {
    "Lisbon": ("Lisbon", (
        "Lisbon is very hilly, so bring comfortable shoes.",
        "Ride the old tram 28 for a cheap tour of the historic neighborhoods.",
        "Try a custard tart at a local bakery in Lisbon.",
        "The sunset from one of the viewpoints over the city is worth the climb.")),
    "Kyoto": ("Kyoto", (
        "Visit the famous temples of Kyoto early in the morning to beat the crowds.",
        "Buy a bus day pass, since the buses reach most of the sights.",
        "Walk through the bamboo grove at Arashiyama.",
        "Many small restaurants in Kyoto only take cash, so carry some yen.")),
    "Iceland": ("Iceland", (
        "Rent a car in Iceland, because the best sights are far apart.",
        "Pack layers and a waterproof jacket, since the weather changes quickly.",
        "The hot springs are a great way to warm up after a long drive.",
        "Food is expensive in Iceland, so stock up at supermarkets.")),
    "New York City": ("New York", (
        "The subway is the fastest way to get around New York.",
        "Walk across the Brooklyn Bridge for a great view of the skyline.",
        "Many museums in New York have pay-what-you-wish hours.",
        "Book popular shows and restaurants a few weeks ahead.")),
    "Barcelona": ("Barcelona", (
        "Book tickets for the Sagrada Familia online, because it sells out.",
        "Dinner in Barcelona starts late, often after nine.",
        "Keep an eye on your bag on busy streets and on the metro.",
        "Spend an afternoon on the beach at Barceloneta.")),
    "Edinburgh": ("Edinburgh", (
        "Climb Arthur's Seat for the best view over Edinburgh.",
        "The old town is compact, so you can walk almost everywhere.",
        "Bring a rain jacket, even in summer.",
        "Book early if you visit Edinburgh during the August festival.")),
    "Mexico City": ("Mexico City", (
        "Try tacos al pastor from a busy street stand in Mexico City.",
        "The city sits high up, so take it easy on your first day.",
        "Visit the pyramids of Teotihuacan on a day trip.",
        "Many museums in Mexico City close on Mondays, so plan your week around that.")),
    "Rome": ("Rome\\b|Roman", (
        "Book the Colosseum and the Vatican Museums ahead to skip long lines.",
        "Carry a water bottle, since Rome has free fountains all over the city.",
        "Eat where the locals eat, a few streets away from the big sights.",
        "Throw a coin into the Trevi Fountain early in the morning, before the crowds arrive in Rome.")),
    "Bali": ("Bali", (
        "Traffic in Bali is slow, so plan one area per day.",
        "Visit the rice terraces near Ubud early in the morning.",
        "Cover your shoulders and knees when you visit a temple.",
        "Drink bottled water in Bali and bring strong sunscreen.")),
    "Vancouver": ("Vancouver", (
        "Rent a bike and ride the seawall around Stanley Park.",
        "The weather in Vancouver is often rainy, so pack a good jacket.",
        "Take the ferry to Granville Island for the public market.",
        "The mountains are close, so you can hike in the morning and be back in Vancouver for dinner.")),
    "Prague": ("Prague", (
        "Cross the Charles Bridge at sunrise, before it fills with people.",
        "Public transport in Prague is cheap and easy to use.",
        "Climb up to the castle for a view over the red roofs.",
        "Try a traditional Czech lunch menu, which is much cheaper than dinner in Prague.")),
    "Cape Town": ("Cape Town", (
        "Take the cable car up Table Mountain on a clear morning.",
        "Drive along the coast to see the penguins at Boulders Beach.",
        "The wind in Cape Town can be strong, so bring a jacket.",
        "Use registered taxis or ride apps at night.")),
    "Florence": ("Florence", (
        "Book the Uffizi Gallery ahead, because the lines are long.",
        "Climb the dome of the cathedral for a view over Florence.",
        "Cross the river to explore the quieter streets of Oltrarno.",
        "Most of Florence is walkable, so skip the car.")),
    "Marrakech": ("Marrakech", (
        "The souks of Marrakech are a maze, so allow time to get a little lost.",
        "Haggling is expected, so start at about half the first price.",
        "Stay in a riad for a quiet courtyard away from the noise.",
        "Visit the Majorelle Garden early in the day, before it gets hot.")),
    "Sydney": ("Sydney", (
        "Take the ferry from Circular Quay to Manly for views of the harbour.",
        "Walk the coastal path from Bondi to Coogee.",
        "The sun in Sydney is strong, so wear a hat and sunscreen.",
        "Get an Opal card for trains, buses and ferries.")),
    "Istanbul": ("Istanbul", (
        "Visit the Hagia Sophia and the Blue Mosque on the same morning, since they are close together.",
        "Take a ferry across the Bosphorus to see Istanbul from the water.",
        "Try a simit from a street cart for a cheap breakfast.",
        "Dress modestly and carry a scarf when visiting mosques.")),
}

_POEM_TOPICS = {
    "the ocean": ("ocean|sea|wave", (
        "The ocean hums a patient song", "Its waves roll in and slip away",
        "Salt and wind on the morning air", "The tide keeps time without a clock",
        "Gulls drift over the open sea", "And every wave comes home again")),
    "autumn leaves": ("autumn|leaves|leaf", (
        "The autumn leaves let go at last", "Red and gold on the quiet path",
        "Each leaf a letter from the trees", "They tumble softly in the wind",
        "The branches stand a little bare", "And autumn whispers it is time")),
    "a rainy morning": ("rain", (
        "The rain taps gently on the glass", "A gray and sleepy morning light",
        "The street shines silver in the rain", "Warm tea and nowhere I must be",
        "Umbrellas bloom along the road", "The rainy hours drift slowly by")),
    "the city at night": ("city|night", (
        "The city hums beneath the stars", "Its windows glow in amber rows",
        "Taxis glide through neon light", "The night is young and never sleeps",
        "A distant siren fades away", "The city dreams with open eyes")),
    "my cat": ("cat\\b|cats|purr|whisker", (
        "My cat curls up in a pool of sun", "She purrs like a tiny engine",
        "Soft paws and whiskers twitching", "She guards the window all day long",
        "A quiet queen upon the chair", "My cat decides when we are done")),
    "friendship": ("friend", (
        "A friend is a lamp on a winding road", "We laugh at jokes no one else knows",
        "Through rain and sun our friendship holds", "You keep my secrets safe and warm",
        "The years go by, the bond stays true", "A good friend always finds the way")),
    "the first snow": ("snow", (
        "The first snow falls without a sound", "It hushes every busy street",
        "White blankets on the sleeping ground", "Small footprints follow where we go",
        "The snow makes strangers of our roofs", "And winter opens its white door")),
    "a cup of coffee": ("coffee|cup", (
        "A cup of coffee warms my hands", "The steam curls up like morning mist",
        "Dark and bitter, rich and kind", "The coffee wakes the sleepy house",
        "One slow sip before the day", "The cup is empty, I am ready")),
    "the mountains": ("mountain|peak", (
        "The mountains rise above the clouds", "Their peaks are dusted white with snow",
        "The trail climbs slowly through the pines", "The mountain air is sharp and clean",
        "Old stone that watched the ages pass", "The mountains never hurry home")),
    "spring flowers": ("spring|flower|bloom", (
        "The spring flowers wake in the garden bed", "Tulips stretch toward the sun",
        "Bright petals open one by one", "Bees hum between the blooms",
        "Color spills across the lawn", "Spring is writing in flowers again")),
    "the stars": ("star", (
        "The stars come out one by one", "Tiny lights on a velvet sky",
        "They shone long before our names", "I count the stars and lose my place",
        "Their silver fire is far and cold", "The stars keep watch until the dawn")),
    "a lighthouse": ("lighthouse", (
        "The lighthouse stands on the rocky shore", "Its beam sweeps slowly through the dark",
        "It guides the ships safely home", "Storms rage but it never moves",
        "A lonely keeper of the coast", "The lighthouse shines for those at sea")),
    "summer evenings": ("summer|evening", (
        "Long summer evenings stretch and glow", "The air smells sweet of cut grass",
        "Fireflies blink above the field", "Laughter drifts from open doors",
        "The sky turns pink and then to blue", "Summer nights are never long enough")),
    "a long train ride": ("train", (
        "The train rocks gently on the rails", "Fields and towns slide past the glass",
        "A stranger sleeps across from me", "The journey hums a steady tune",
        "Each station holds a different life", "The long train carries me along")),
    "the garden": ("garden", (
        "The garden wakes with morning dew", "Tomatoes ripen on the vine",
        "Bees hum softly in the thyme", "My hands are warm with dark soil",
        "Each seed a promise of the spring", "The garden grows while I am gone")),
    "an old library": ("library|book", (
        "The old library smells of dust and time", "Tall shelves lean with worn-out books",
        "Each page holds voices from the past", "Sunlight falls across the tables",
        "A quiet hush fills every room", "The books wait patiently for readers")),
}

_HISTORY_TOPICS = {
    "the Roman Empire": ("Roman|Rome\\b", (
        "At its height, the Roman Empire stretched from Britain to the Middle East.",
        "The Romans built more than 80,000 kilometers of paved roads.",
        "Latin, the language of Rome, is the root of Italian, Spanish and French.",
        "The Western Roman Empire fell in 476 AD.")),
    "the moon landing": ("moon|Apollo", (
        "Apollo 11 landed on the Moon on July 20, 1969.",
        "Neil Armstrong was the first person to walk on the Moon.",
        "The astronauts left a plaque that says they came in peace for all mankind.",
        "About 600 million people watched the landing on television.")),
    "the printing press": ("print|Gutenberg", (
        "Johannes Gutenberg built his printing press around 1440.",
        "His press used movable metal type that could be rearranged for each page.",
        "Books became much cheaper, and more people learned to read.",
        "The Gutenberg Bible was one of the first major books printed in Europe.")),
    "the French Revolution": ("French Revolution|Bastille|Revolution", (
        "The French Revolution began in 1789.",
        "Crowds stormed the Bastille prison on July 14, which France still celebrates.",
        "The revolution ended the monarchy and King Louis XVI was executed in 1793.",
        "Its ideals of liberty, equality and fraternity spread across Europe.")),
    "the Great Wall of China": ("Great Wall", (
        "The Great Wall of China was built over many centuries by different dynasties.",
        "Most of the wall you can visit today was built during the Ming dynasty.",
        "Counting all its branches, the wall is more than 20,000 kilometers long.",
        "Contrary to the myth, the Great Wall is not visible from the Moon with the naked eye.")),
    "ancient Egypt": ("Egypt|pharaoh|pyramid", (
        "Ancient Egypt lasted for about 3,000 years along the Nile.",
        "The Great Pyramid of Giza was built for the pharaoh Khufu around 2560 BC.",
        "Egyptians wrote with hieroglyphs, a script of hundreds of picture signs.",
        "Cleopatra lived closer in time to the moon landing than to the building of the Great Pyramid.")),
    "the Wright brothers": ("Wright", (
        "The Wright brothers made the first powered airplane flight in 1903.",
        "Their first flight at Kitty Hawk lasted just 12 seconds.",
        "Orville and Wilbur Wright ran a bicycle shop before they built airplanes.",
        "They built their own wind tunnel to test wing shapes.")),
    "the fall of the Berlin Wall": ("Berlin", (
        "The Berlin Wall fell on November 9, 1989.",
        "It had divided East and West Berlin for 28 years.",
        "Crowds climbed on the wall and chipped off pieces as souvenirs.",
        "Germany was reunified less than a year after the Berlin Wall came down.")),
    "the Magna Carta": ("Magna Carta", (
        "The Magna Carta was sealed by King John of England in 1215.",
        "It said that even the king had to follow the law.",
        "Only four copies of the original 1215 Magna Carta survive.",
        "Its ideas influenced later charters of rights, including the American Bill of Rights.")),
    "the Black Death": ("Black Death|plague", (
        "The Black Death swept through Europe between 1347 and 1351.",
        "It was a plague spread by fleas that lived on rats.",
        "It killed roughly a third of the people in Europe.",
        "The labor shortage after the plague raised wages for many workers.")),
    "the Industrial Revolution": ("Industrial|factor|steam", (
        "The Industrial Revolution began in Britain in the late 1700s.",
        "Steam engines powered new factories, mines and railways.",
        "Many people moved from farms to cities to work in factories.",
        "It changed how goods were made more than anything since farming began.")),
    "the Vikings": ("Viking", (
        "The Vikings were seafarers from Scandinavia who raided and traded from about 793 to 1066.",
        "Viking explorers reached North America around the year 1000.",
        "Vikings probably never wore horned helmets in battle.",
        "Their longships were fast enough to cross the open ocean and light enough to row up rivers.")),
    "the Renaissance": ("Renaissance", (
        "The Renaissance began in Italy in the 1300s.",
        "Artists like Leonardo da Vinci and Michelangelo worked during the Renaissance.",
        "It brought a new interest in the science and art of ancient Greece and Rome.",
        "Florence and its wealthy families paid for much of the new art.")),
    "the Titanic": ("Titanic", (
        "The Titanic sank on April 15, 1912, on its first voyage.",
        "It hit an iceberg in the North Atlantic late at night.",
        "There were only enough lifeboats for about half of the people on board.",
        "The wreck of the Titanic was found in 1985, almost four kilometers down.")),
    "the first Olympic Games": ("Olymp", (
        "The first recorded Olympic Games were held in Olympia, Greece, in 776 BC.",
        "The only event at the first games was a short foot race.",
        "Winners received a crown of olive leaves, not a medal.",
        "The modern Olympics started in Athens in 1896.")),
    "the invention of the telephone": ("telephone|Bell", (
        "Alexander Graham Bell received the patent for the telephone in 1876.",
        "His first words on it were a request to his assistant, Mr. Watson, to come to him.",
        "Other inventors were working on similar ideas at the same time.",
        "Within a few decades the telephone had spread to millions of homes.")),
}

_PRODUCT_TOPICS = {
    "noise-cancelling headphones": ("headphone", (
        "These headphones block out traffic, chatter and engine hum at the touch of a button.",
        "Soft memory foam cushions keep them comfortable for hours.",
        "The battery lasts up to thirty hours on a single charge.",
        "They fold flat into a slim case for travel.")),
    "a stainless steel water bottle": ("bottle", (
        "This stainless steel bottle keeps drinks cold for a full day.",
        "The double wall means no sweating and no wet bags.",
        "A leak-proof lid makes it safe to toss in your backpack.",
        "It is free of plastic taste and easy to clean.")),
    "a standing desk": ("desk", (
        "This standing desk moves from sitting to standing height in seconds.",
        "A quiet motor and memory buttons remember your favorite heights.",
        "The wide top fits two monitors and a laptop.",
        "A sturdy steel frame keeps it steady even at full height.")),
    "a smart thermostat": ("thermostat", (
        "This smart thermostat learns your schedule and adjusts the heat for you.",
        "Control the temperature from your phone, wherever you are.",
        "Energy reports show where you can save money.",
        "It installs in about thirty minutes with the tools in the box.")),
    "a travel backpack": ("backpack", (
        "This travel backpack fits carry-on limits on most airlines.",
        "It opens flat like a suitcase, so packing is easy.",
        "A padded sleeve protects laptops up to sixteen inches.",
        "Water-resistant fabric keeps your things dry in the rain.")),
    "a cast iron skillet": ("skillet|cast iron", (
        "This cast iron skillet comes pre-seasoned and ready to cook.",
        "It holds heat evenly for a perfect sear.",
        "Use it on the stove, in the oven or over a campfire.",
        "With a little care, it will last for generations.")),
    "an electric toothbrush": ("toothbrush", (
        "This electric toothbrush removes more plaque than brushing by hand.",
        "A two-minute timer pulses every thirty seconds to move you along.",
        "Three cleaning modes cover sensitive teeth and whitening.",
        "One charge lasts up to three weeks.")),
    "a yoga mat": ("yoga|mat\\b", (
        "This yoga mat grips the floor and your hands, even in a sweaty class.",
        "Extra cushioning protects your knees and wrists.",
        "It is light enough to carry to the studio.",
        "The surface wipes clean in seconds.")),
    "a mechanical keyboard": ("keyboard", (
        "This mechanical keyboard has tactile switches that make typing a pleasure.",
        "Every key can be remapped, and the backlight is adjustable.",
        "A detachable cable makes it easy to pack.",
        "The compact layout leaves more room for your mouse.")),
    "a robot vacuum": ("vacuum", (
        "This robot vacuum maps your home and cleans room by room.",
        "Strong suction picks up pet hair from carpets and hard floors.",
        "It returns to its dock to recharge on its own.",
        "Schedule cleanings from the app while you are out.")),
    "a reading lamp": ("lamp", (
        "This reading lamp gives warm, even light without glare.",
        "Five brightness levels suit late nights and early mornings.",
        "The flexible neck points the light exactly where you need it.",
        "It uses a long-lasting LED that stays cool to the touch.")),
    "a portable charger": ("charger", (
        "This portable charger can refill a phone up to four times.",
        "Fast charging gets you to half in about thirty minutes.",
        "It is small enough to slip into a pocket.",
        "Two ports let you charge two devices at once.")),
    "a pair of running shoes": ("shoe|runner|running", (
        "These running shoes have a light, springy foam that returns energy with every step.",
        "A breathable mesh upper keeps your feet cool.",
        "The grippy outsole holds on wet roads.",
        "They are built for daily training and long weekend runs.")),
    "a wool blanket": ("blanket|wool", (
        "This wool blanket is warm, soft and naturally breathable.",
        "It keeps you cozy on cold nights without overheating.",
        "The classic woven pattern looks great on a sofa or bed.",
        "It is woven from responsibly sourced wool.")),
    "a smartwatch": ("smartwatch|watch", (
        "This smartwatch tracks your steps, sleep and heart rate.",
        "Get messages and calls right on your wrist.",
        "Built-in GPS maps your runs without your phone.",
        "The battery lasts a full week on one charge.")),
    "a bike helmet": ("helmet", (
        "This bike helmet is light, well ventilated and certified for safety.",
        "A simple dial fits it snugly to your head.",
        "A rear light keeps you visible at night.",
        "It comes in six colors and three sizes.")),
}

_MESSAGE_TOPICS = {**_PERSONAL_TOPICS, **_WORK_TOPICS}
_DOMAIN_TOPICS = {
    "python_code": _PYTHON_TOPICS,
    "explain_child": _CHILD_TOPICS,
    "recipe": _RECIPE_TOPICS,
    "travel_tip": _TRAVEL_TOPICS,
    "poem": _POEM_TOPICS,
    "history_fact": _HISTORY_TOPICS,
    "product_description": _PRODUCT_TOPICS,
}
_TOPIC_TABLE = {**{s: _MESSAGE_TOPICS for s in MESSAGING}, **_DOMAIN_TOPICS}

TOPICS: dict[str, tuple[str, ...]] = {s: tuple(_TOPIC_TABLE[s]) for s in SCENARIOS}

# --------------------------------------------------------------------------------------------------
# Prompt templates. Slots: {who} (a way of naming the recipient), {topic}, and a few extras ({age},
# {kid}, {n}, {days}) that vary the wording but are not part of the Request. Every template is
# compiled into a regex for parse_request, so templates of different scenarios must not overlap.

_TEMPLATES = {
    "text_message": (
        "Text {who} about {topic}.",
        "Write a text message to {who} about {topic}.",
        "Can you draft a quick text to {who} about {topic}?",
        "Help me text {who} about {topic}.",
        "I need to send {who} a text about {topic}. What should I say?",
        "What should I text {who} about {topic}?",
        "Write a short text to {who} about {topic}.",
        "Draft a text for {who} about {topic}.",
    ),
    "email": (
        "Write an email to {who} about {topic}.",
        "Draft an email to {who} regarding {topic}.",
        "Can you write {who} an email about {topic}?",
        "Help me email {who} about {topic}.",
        "I need to email {who} about {topic}. Can you write it for me?",
        "Compose a short email to {who} about {topic}.",
        "Email {who} about {topic}.",
    ),
    "slack_dm": (
        "Write a Slack DM to {who} about {topic}.",
        "Draft a Slack message to {who} about {topic}.",
        "Help me Slack {who} about {topic}.",
        "Can you write a quick Slack message to {who} about {topic}?",
        "Send {who} a Slack DM about {topic}.",
        "What should I DM {who} on Slack about {topic}?",
        "I need to ping {who} on Slack about {topic}. What should I write?",
    ),
    "python_code": (
        "How do I {topic} in Python?",
        "What's the easiest way to {topic} in Python?",
        "Show me how to {topic} with Python.",
        "Write Python code to {topic}.",
        "In Python, how can I {topic}?",
        "Can you give me a Python snippet to {topic}?",
        "I'm learning Python. How do I {topic}?",
    ),
    "explain_child": (
        "Explain {topic} to a {age}-year-old.",
        "How would you explain {topic} to my {kid}?",
        "My {kid} asked me about {topic}. How can I explain it simply?",
        "Explain {topic} like I'm {age}.",
        "Can you explain {topic} so that a child can understand it?",
        "What's a simple way to explain {topic} to kids?",
        "Help me explain {topic} to my {age}-year-old {kid}.",
    ),
    "recipe": (
        "How do I make {topic}?",
        "Give me a simple recipe for {topic}.",
        "What's an easy recipe for {topic}?",
        "I'd like to make {topic} tonight. What do I do?",
        "Can you share a quick recipe for {topic} that serves {n}?",
        "Teach me how to make {topic} at home.",
        "I've never made {topic} before. Where do I start?",
    ),
    "travel_tip": (
        "Give me some travel tips for {topic}.",
        "I'm visiting {topic} next month. Any tips?",
        "What should I know before traveling to {topic}?",
        "Any advice for a first trip to {topic}?",
        "What are the best things to do in {topic}?",
        "I have {days} days in {topic}. What do you recommend?",
        "Can you give me a few tips for a trip to {topic}?",
    ),
    "poem": (
        "Write a short poem about {topic}.",
        "Can you write me a poem about {topic}?",
        "I'd love a little poem about {topic}.",
        "Could you compose a poem about {topic}?",
        "Write a few lines of poetry about {topic}.",
        "Give me a short verse about {topic}.",
        "Make up a quick poem about {topic}.",
    ),
    "history_fact": (
        "Tell me a history fact about {topic}.",
        "What's an interesting fact about {topic}?",
        "Share a fun fact about {topic}.",
        "Give me a quick history lesson on {topic}.",
        "I'm curious about {topic}. Tell me something interesting.",
        "What should everyone know about {topic}?",
        "Teach me one thing about {topic}.",
    ),
    "product_description": (
        "Write a product description for {topic}.",
        "Can you write a short description of {topic} for our online store?",
        "I need a product blurb for {topic}.",
        "Describe {topic} for a product listing.",
        "Write some catchy copy for {topic}.",
        "Give me a short sales description of {topic}.",
        "Help me describe {topic} for my shop.",
    ),
}
_EXTRA_SLOTS = {
    "age": tuple(str(a) for a in range(4, 11)),
    "kid": ("son", "daughter", "niece", "nephew"),
    "n": tuple(str(n) for n in range(2, 7)),
    "days": tuple(str(d) for d in range(2, 8)),
}
# Openers and closers around any prompt; "" is listed several times to make it the common case.
_PREFIXES = ("", "", "", "", "Hi. ", "Hello! ", "Hey. ", "Quick one. ")
_SUFFIXES = ("", "", "", " Thanks.", " Thank you!", " Thanks in advance.")

# --------------------------------------------------------------------------------------------------
# Reply pieces.

_TEXT_GREETINGS = ("Hi {a}, ", "Hey {a}, ", "{a}, ", "Hi {a}! ", "Hey {a}! ", "Hey {a}. ")
_SLACK_GREETINGS = ("Hi {a}, ", "Hey {a}, ", "{a}, quick one: ", "Hey {a}! ", "Morning {a}, ")
_EMAIL_GREETINGS = ("Hi {a},", "Hello {a},", "Dear {a},")
_TEAM_EMAIL_GREETINGS = ("Hi team,", "Hello everyone,", "Hi everyone,", "Dear team,")
_SUBJECTS = ("{title}", "Update on {topic}", "Question about {topic}", "Quick note on {topic}")
_MESSAGE_FRAMES = ("I wanted to check in about {topic}.", "Quick note about {topic}.",
                   "Just following up on {topic}.", "I've been meaning to message you about {topic}.")
_MESSAGE_CLOSERS = ("Let me know what you think.", "Let me know if that works for you.",
                    "What do you think?", "No rush on this.")
_EMAIL_OPENERS = ("I hope you are doing well.", "I hope your week is going well.")
_EMAIL_CLOSERS = ("Please let me know if you have any questions.", "I'm happy to discuss this further.",
                  "Let me know what you think.")
EMAIL_CLOSINGS = ("Best regards",)  # the only closing line the world writes, in ~1 email in 12
_CHILD_CLOSERS = ("Pretty amazing, right?", "Isn't that cool?", "Nature is full of surprises like that.")
_PRODUCT_CLOSERS = ("It also makes a thoughtful gift.", "It comes with a two-year warranty.")

SCENARIO_WEIGHTS = {s: (1.5 if s in MESSAGING else 1.0) for s in SCENARIOS}  # corpus() mix
MAX_REPLY_WORDS = 120  # on_topic rejects longer replies (baseline replies stay under ~60 words)
_PIN_KEYS = ("topic", "recipient", "relation", "channel")
# The one table of feedback selector keys: key -> (the Request field it tests, what one value names).
SELECTOR_KEYS = {"scenarios": ("scenario", "scenario"), "topics": ("topic", "topic"),
                 "recipients": ("recipient", "person"), "relations": ("relation", "relation"),
                 "channels": ("channel", "channel")}


# --------------------------------------------------------------------------------------------------
# People helpers.

def _who_forms(name: str) -> tuple[str, ...]:
    """The ways a prompt names this recipient: "my girlfriend Maddie", "Maddie", "Mom", "the sales team"."""
    relation = PEOPLE[name][0]
    if relation == "team":
        return (f"the {name}", f"everyone on the {name}")
    if relation in _TITLE:
        return (f"my {relation}", _TITLE[relation], f"my {relation} {name}")
    owner = "our" if relation == "client" else "my"
    words = _RELATION_WORDS.get(relation, (relation,))
    return tuple(f"{owner} {w} {name}" for w in words) + (name,)


def _address(name: str) -> str:
    """How a reply greets the recipient: the first name, a title ("Mom") or "team"."""
    relation = PEOPLE[name][0]
    return _TEAM_ADDRESS[0] if relation == "team" else _TITLE.get(relation, name)


def _recipient_words(name: str) -> tuple[str, ...]:
    """Words that, in a reply, name this recipient (name, title, relation words)."""
    relation = PEOPLE[name][0]
    if relation == "team":
        return (name, *_TEAM_ADDRESS)
    words = (name, relation, *_RELATION_WORDS.get(relation, ()))
    return words + ((_TITLE[relation],) if relation in _TITLE else ())


@functools.lru_cache(maxsize=None)
def _words_re(words: tuple[str, ...]) -> re.Pattern:
    return re.compile(r"\b(?:%s)\b" % "|".join(map(re.escape, words)), re.IGNORECASE)


@functools.lru_cache(maxsize=None)
def _addressee_words() -> dict[str, frozenset[str]]:
    """Lower-cased greeting word -> the recipients it may address ("mom" -> {"Linda"}, "team" -> teams)."""
    table: dict[str, set[str]] = {}
    for name, (relation, _) in PEOPLE.items():
        words = _TEAM_ADDRESS if relation == "team" else (name, _TITLE.get(relation, name))
        for word in words:
            table.setdefault(word.lower(), set()).add(name)
    return {w: frozenset(names) for w, names in table.items()}


def _greeted(text: str) -> set[str]:
    """Known recipients the reply opens by addressing ("Hi Maddie, ..." / "Mom, ..." -> that person).

    The opening clause counts as a greeting when it starts with a greeting word or has at most
    three words, so "Everyone is coming to the family dinner." greets no one.
    """
    body = re.sub(r"^\s*subject\s*:[^\n]*\n", "", text, flags=re.IGNORECASE).lstrip()
    words = re.findall(r"[A-Za-z]+", re.split(r"[,.!?:;\n]", body, maxsplit=1)[0])
    if not words or (len(words) > 3 and words[0].lower() not in _GREETING_WORDS):
        return set()
    table = _addressee_words()
    return {name for word in words for name in table.get(word.lower(), ())}


# --------------------------------------------------------------------------------------------------
# Requests.

def topic_pattern(scenario: str, topic: str) -> re.Pattern:
    """The keyword regex that marks a reply as being about ``topic`` (case-insensitive, word start)."""
    try:
        keyword = _TOPIC_TABLE[scenario][topic][0]
    except KeyError:
        raise ValueError(f"unknown scenario/topic {scenario!r}/{topic!r}; see TOPICS") from None
    return _keyword_re(keyword)


@functools.lru_cache(maxsize=None)
def _keyword_re(keyword: str) -> re.Pattern:
    return re.compile(r"\b(?:%s)" % keyword, re.IGNORECASE)


def _eligible(scenario: str, pins: dict) -> list[str]:
    """Recipients of a messaging scenario that satisfy the recipient / relation / channel pins."""
    channel = CHANNEL_OF[scenario]
    if pins.get("channel", channel) != channel:
        return []
    return [name for name, (relation, channels) in PEOPLE.items()
            if channel in channels and pins.get("recipient", name) == name
            and pins.get("relation", relation) == relation]


def _pin_error(scenario: str, pins: dict) -> str | None:
    """Why ``pins`` cannot hold for ``scenario``, or None when they can."""
    if "topic" in pins and pins["topic"] not in TOPICS[scenario]:
        return f"topic {pins['topic']!r} is not a {scenario} topic (see TOPICS[{scenario!r}])"
    if scenario not in CHANNEL_OF:
        extra = sorted(set(pins) - {"topic"})
        return f"{scenario} requests have no {'/'.join(extra)}" if extra else None
    if not _eligible(scenario, pins):
        return f"no recipient matches {pins} for {scenario} (channel {CHANNEL_OF[scenario]!r})"
    return None


def _check_pins(fixed: dict) -> dict:
    """Drop None pins; reject unknown keys, names and relations with one clear line."""
    unknown = sorted(set(fixed) - set(_PIN_KEYS))
    if unknown:
        raise ValueError(f"unknown pin(s) {unknown}; expected a subset of {list(_PIN_KEYS)}")
    pins = {k: v for k, v in fixed.items() if v is not None}
    if "recipient" in pins and pins["recipient"] not in PEOPLE:
        raise ValueError(f"unknown recipient {pins['recipient']!r}; see PEOPLE")
    if "relation" in pins and pins["relation"] not in {r for r, _ in PEOPLE.values()}:
        raise ValueError(f"unknown relation {pins['relation']!r}; see PEOPLE")
    return pins


def sample_request(rng: random.Random, scenario: str | None = None, **fixed) -> Request:
    """Draw one request; ``fixed`` pins any of topic / recipient / relation / channel.

    With no scenario, one is drawn uniformly among those the pins allow. A relation pin draws a
    person with that relation. Impossible pins (a recipient on python_code, an unknown name, a
    topic of another scenario, Maddie on Slack) raise ValueError.
    """
    pins = _check_pins(fixed)
    if scenario is None:
        options = [s for s in SCENARIOS if _pin_error(s, pins) is None]
        if not options:
            raise ValueError(f"no scenario satisfies the pins {pins}")
        scenario = rng.choice(options)
    elif scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {list(SCENARIOS)}")
    elif (error := _pin_error(scenario, pins)) is not None:
        raise ValueError(error)
    if scenario not in CHANNEL_OF:
        topic = pins.get("topic") or rng.choice(TOPICS[scenario])
        return Request(scenario, _render_prompt(rng, scenario, topic), topic)
    name = rng.choice(_eligible(scenario, pins))
    topic = pins.get("topic") or _message_topic(rng, name)
    prompt = _render_prompt(rng, scenario, topic, who=rng.choice(_who_forms(name)))
    return Request(scenario, prompt, topic, name, PEOPLE[name][0], CHANNEL_OF[scenario])


def _message_topic(rng: random.Random, name: str) -> str:
    """Mostly work topics for work contacts and personal ones for the rest; 15% the other way."""
    work = PEOPLE[name][0] in _WORK_RELATIONS
    if rng.random() < 0.15:
        work = not work
    return rng.choice(tuple(_WORK_TOPICS if work else _PERSONAL_TOPICS))


def _fields(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def _render_prompt(rng: random.Random, scenario: str, topic: str, who: str | None = None) -> str:
    template = rng.choice(_TEMPLATES[scenario])
    slots = {"topic": topic, "who": who}
    for field in _fields(template):
        if field in _EXTRA_SLOTS:
            slots[field] = rng.choice(_EXTRA_SLOTS[field])
    return rng.choice(_PREFIXES) + template.format(**slots) + rng.choice(_SUFFIXES)


# --------------------------------------------------------------------------------------------------
# Parsing: one compiled regex per template; topics and names come from the known lists.

def _alternation(options) -> str:
    return "|".join(re.escape(o) for o in sorted(set(options), key=len, reverse=True))


def _template_regex(scenario: str, template: str, who_map: dict[str, str]) -> re.Pattern:
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field == "topic":
            parts.append(f"(?P<topic>{_alternation(TOPICS[scenario])})")
        elif field == "who":
            parts.append(f"(?P<who>{_alternation(who_map)})")
        elif field:
            parts.append(f"(?:{_alternation(_EXTRA_SLOTS[field])})")
    prefix = _alternation(p for p in _PREFIXES if p)
    suffix = _alternation(s for s in _SUFFIXES if s)
    return re.compile(f"(?:{prefix})?{''.join(parts)}(?:{suffix})?")


@functools.lru_cache(maxsize=None)
def _parsers() -> tuple[tuple[str, re.Pattern, dict[str, str]], ...]:
    """(scenario, regex, who-form -> recipient) for every template of the world."""
    parsers = []
    for scenario, templates in _TEMPLATES.items():
        who_map = {}
        if scenario in CHANNEL_OF:
            who_map = {form: name for name, (_, channels) in PEOPLE.items()
                       if CHANNEL_OF[scenario] in channels for form in _who_forms(name)}
        parsers += [(scenario, _template_regex(scenario, t, who_map), who_map) for t in templates]
    return tuple(parsers)


def parse_request(prompt: str) -> Request | None:
    """Recover the Request behind a prompt ``sample_request`` can produce; None for any other text.

    Exact inverse: ``parse_request(r.prompt) == r``. Returns None too if a text were to match two
    different requests (the templates are written so that none does; the tests check it).
    """
    if not isinstance(prompt, str):
        return None
    found = set()
    for scenario, pattern, who_map in _parsers():
        m = pattern.fullmatch(prompt)
        if m is None:
            continue
        if scenario in CHANNEL_OF:
            name = who_map[m["who"]]
            found.add(Request(scenario, prompt, m["topic"], name, PEOPLE[name][0], CHANNEL_OF[scenario]))
        else:
            found.add(Request(scenario, prompt, m["topic"]))
    return found.pop() if len(found) == 1 else None


# --------------------------------------------------------------------------------------------------
# Baseline replies.

def _pick(rng: random.Random, keyword: str, pool: tuple[str, ...], lo: int, hi: int) -> list[str]:
    """``lo``..``hi`` sentences of ``pool`` in their order, at least one matching the topic keyword."""
    pattern = _keyword_re(keyword)
    chosen = sorted(rng.sample(range(len(pool)), rng.randint(lo, min(hi, len(pool)))))
    if not any(pattern.search(pool[i]) for i in chosen):
        hits = [i for i, s in enumerate(pool) if pattern.search(s)]
        chosen = sorted(chosen[1:] + [rng.choice(hits)])
    return [pool[i] for i in chosen]


def _after_greeting(greeting: str, sentence: str) -> str:
    """Join a greeting and the first sentence: "Hi Maddie, " + "Are we ..." -> "Hi Maddie, are we ..."."""
    if greeting.endswith((", ", ": ")) and not re.match(r"I\b", sentence):
        sentence = sentence[0].lower() + sentence[1:]
    return greeting + sentence


def _message_body(rng: random.Random, topic: str, openers: tuple[str, ...], closers: tuple[str, ...]) -> list[str]:
    """1-4 sentences of a message: [opener] [frame] topic sentences [closer]."""
    _, pool = _MESSAGE_TOPICS[topic]
    body = [pool[i] for i in sorted(rng.sample(range(len(pool)), rng.choice((1, 2, 2, 3))))]
    if len(body) < 3 and rng.random() < 0.35:
        body.insert(0, rng.choice(_MESSAGE_FRAMES).format(topic=topic))
    if openers and len(body) < 4 and rng.random() < 0.35:
        body.insert(0, rng.choice(openers))
    if len(body) < 4 and rng.random() < 0.3:
        body.append(rng.choice(closers))
    return body


# Emoji a text may end with, by the recipient's relation (see the module docstring).
TEXT_EMOJI_RATE = 0.125
TEXT_EMOJI = {
    "girlfriend": ("😊",),
    "mom": ("❤️", "😊"), "dad": ("❤️", "😊"), "grandma": ("❤️", "😊"), "grandpa": ("❤️", "😊"),
    "sister": ("❤️", "😂", "😊"), "cousin": ("😂", "😊", "🎉"), "brother": ("😊", "👍"),
    "friend": ("😂", "😊", "🎉", "👍"), "roommate": ("😂", "👍"), "neighbor": ("😊", "👍"),
}
_WORK_EMOJI = ("👍", "🙂")


def _chat_reply(rng: random.Random, request: Request) -> str:
    greetings = _SLACK_GREETINGS if request.channel == "slack" else _TEXT_GREETINGS
    greeting = rng.choice(greetings).format(a=_address(request.recipient))
    first, *rest = _message_body(rng, request.topic, (), _MESSAGE_CLOSERS)
    text = " ".join([_after_greeting(greeting, first), *rest])
    if request.channel == "text" and rng.random() < TEXT_EMOJI_RATE:
        text += " " + rng.choice(TEXT_EMOJI.get(request.relation, _WORK_EMOJI))
    return text


def _subject(rng: random.Random, topic: str) -> str:
    title = re.sub(r"^(?:the|a|an) ", "", topic)
    return rng.choice(_SUBJECTS).format(title=title[0].upper() + title[1:], topic=topic)


def _email_reply(rng: random.Random, request: Request) -> str:
    subject = _subject(rng, request.topic)
    if request.relation == "team":
        greeting = rng.choice(_TEAM_EMAIL_GREETINGS)
    else:
        greeting = rng.choice(_EMAIL_GREETINGS).format(a=_address(request.recipient))
    body = " ".join(_message_body(rng, request.topic, _EMAIL_OPENERS, _EMAIL_CLOSERS))
    reply = f"Subject: {subject}\n\n{greeting}\n\n{body}"
    if rng.random() < 1 / 12:
        reply += "\n\n" + rng.choice(EMAIL_CLOSINGS)
    return reply


def _python_reply(rng: random.Random, request: Request) -> str:
    _, code, explanations = _PYTHON_TOPICS[request.topic]
    block = f"```python\n{code}\n```"
    parts = [rng.choice(explanations), block]
    return "\n\n".join(parts if rng.random() < 0.5 else parts[::-1])


def _prose_reply(lo: int, hi: int, closers: tuple[str, ...] = (), p_closer: float = 0.0):
    """A reply writer that picks ``lo``..``hi`` sentences of the topic and maybe a closer."""
    def write(rng: random.Random, request: Request) -> str:
        keyword, pool = _DOMAIN_TOPICS[request.scenario][request.topic]
        sentences = _pick(rng, keyword, pool, lo, hi)
        if closers and len(sentences) < 4 and rng.random() < p_closer:
            sentences.append(rng.choice(closers))
        return " ".join(sentences)
    return write


def _poem_reply(rng: random.Random, request: Request) -> str:
    keyword, pool = _POEM_TOPICS[request.topic]
    return "\n".join(_pick(rng, keyword, pool, 3, 4)) + "."


_WRITERS = {
    "text_message": _chat_reply,
    "email": _email_reply,
    "slack_dm": _chat_reply,
    "python_code": _python_reply,
    "explain_child": _prose_reply(2, 3, _CHILD_CLOSERS, 0.2),
    "recipe": _prose_reply(2, 4),
    "travel_tip": _prose_reply(2, 3),
    "poem": _poem_reply,
    "history_fact": _prose_reply(1, 3),
    "product_description": _prose_reply(2, 3, _PRODUCT_CLOSERS, 0.25),
}


def baseline_reply(rng: random.Random, request: Request) -> str:
    """The world's plain assistant reply to ``request``: on topic, addressed, 1-4 sentences.

    See the module docstring for what replies contain (and, on purpose, do not: emoji, sign-offs
    at the end of texts, code fences outside python_code, all-caps, fixed openings).
    """
    if request.topic not in _TOPIC_TABLE.get(request.scenario, {}):
        raise ValueError(f"unknown scenario/topic {request.scenario!r}/{request.topic!r}; see TOPICS")
    if request.scenario in CHANNEL_OF and request.recipient not in PEOPLE:
        raise ValueError(f"unknown recipient {request.recipient!r}; see PEOPLE")
    return _WRITERS[request.scenario](rng, request)


# --------------------------------------------------------------------------------------------------
# The checker.

_CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n.*?```", re.DOTALL | re.IGNORECASE)
_SUBJECT_LINE = re.compile(r"^\s*subject\s*:", re.IGNORECASE | re.MULTILINE)
# A message greets, or speaks in the first person ("I'm running late", "are we still on ...").
_MESSAGE_LIKE = re.compile(r"^\s*(?:hi|hey|hello|dear|good morning|morning)\b"
                           r"|\b(?:I|I'm|I'll|I've|I'd|me|my|let's|are we|shall we)\b", re.IGNORECASE)


def _poem_like(text: str) -> bool:
    """At least two lines, or at least three short line-like clauses."""
    if sum(1 for line in text.splitlines() if line.strip()) >= 2:
        return True
    clauses = [c for c in re.split(r"[,;.!?]", text) if c.strip()]
    return len(clauses) >= 3 and all(len(c.split()) <= 12 for c in clauses)


def _addressed_to(request: Request, text: str) -> bool:
    """A message to the request's recipient: it names them, or reads as a message greeting no one else."""
    greeted = _greeted(text)
    if greeted and request.recipient not in greeted:
        return False
    if _words_re(_recipient_words(request.recipient)).search(text):
        return True
    return bool(_MESSAGE_LIKE.search(text))


def on_topic(request: Request, reply: str) -> bool:
    """The world's judge: is ``reply`` an answer to ``request`` (its scenario, topic and recipient)?

    Every reply must mention the topic (``topic_pattern``), be 3..MAX_REPLY_WORDS words long, not be
    a world prompt itself (an echo), and hold
    a code fence exactly when the scenario is python_code. Messages must be addressed to the
    recipient (named, or a message that greets no one else); texts and Slack DMs have no
    "Subject:" line; other scenarios must not greet a known person; a poem has >= 2 lines or >= 3
    short clauses. Paraphrases pass: nothing is compared with the world's own templates.
    """
    text = reply.strip()
    if not 3 <= len(text.split()) <= MAX_REPLY_WORDS or parse_request(text) is not None:
        return False  # empty, degenerate, or a user request (an echoed prompt) rather than an answer
    if request.scenario == "python_code":
        if not _CODE_BLOCK.search(text):
            return False
    elif "```" in text:
        return False
    if not topic_pattern(request.scenario, request.topic).search(text):
        return False
    if request.scenario in CHANNEL_OF:
        if request.channel != "email" and _SUBJECT_LINE.search(text):
            return False
        return _addressed_to(request, text)
    if _greeted(text):
        return False
    return request.scenario != "poem" or _poem_like(text)


# --------------------------------------------------------------------------------------------------
# Corpora, evaluation requests and selectors.

def corpus(seed: int, n: int, style_rate: float = STYLE_RATE) -> list[tuple[Request, str]]:
    """``n`` (request, reply) pairs drawn from ``random.Random(seed)``: the model's training corpus.

    Scenarios are drawn per pair with SCENARIO_WEIGHTS (messaging 1.5, others 1.0: ~13% and ~8.7%
    each), so ``corpus(s, m)`` is a prefix of ``corpus(s, n)`` for m <= n. Each reply is the
    ``baseline_reply``, except that a share ``style_rate`` of them is rewritten in one rare style
    (``rlvf.tinyworld.styles``: all caps, bullets, a sign-off, ...; see there why), drawn from a
    stream of its own: any ``style_rate`` gives the same requests, and 0 the plain replies.
    """
    rng, style_rng = random.Random(seed), random.Random(f"style:{seed}")  # styles: their own stream
    weights = [SCENARIO_WEIGHTS[s] for s in SCENARIOS]
    pairs = []
    for _ in range(n):
        request = sample_request(rng, rng.choices(SCENARIOS, weights)[0])
        reply = baseline_reply(rng, request)
        if style_rng.random() < style_rate:
            reply = restyle(style_rng, request, reply)
        pairs.append((request, reply))
    return pairs


def held_out_requests(seed: int, n: int, exclude: Iterable[str] = frozenset()) -> list[Request]:
    """``n`` evaluation requests with distinct prompts, none of them in ``exclude``.

    Drawn from their own stream (``random.Random(f"held-out:{seed}")``, never the stream of
    ``corpus(seed, ...)``), cycling through SCENARIOS so that each is equally represented. To keep
    evaluation prompts out of the training data pass the training prompts:
    ``held_out_requests(1, 200, exclude={r.prompt for r, _ in corpus(0, 20000)})``.
    """
    rng = random.Random(f"held-out:{seed}")
    seen, requests = set(exclude), []
    for _ in range(1000 + 200 * n):
        if len(requests) == n:
            break
        request = sample_request(rng, SCENARIOS[len(requests) % len(SCENARIOS)])
        if request.prompt not in seen:
            seen.add(request.prompt)
            requests.append(request)
    if len(requests) < n:
        raise ValueError(f"could not draw {n} distinct held-out prompts outside the excluded ones; "
                         f"ask for fewer or exclude fewer")
    return requests


def matches(request: Request, selector: dict) -> bool:
    """Whether ``request`` falls in a feedback's scope.

    ``selector`` maps any of scenarios / topics / recipients / relations / channels to a list of
    allowed values; every given key must contain the request's value (None never matches). An
    empty selector matches every request. Unknown keys or non-list values raise ValueError.
    """
    for key, values in selector.items():
        if key not in SELECTOR_KEYS:
            raise ValueError(f"unknown selector key {key!r}; expected a subset of {list(SELECTOR_KEYS)}")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__contains__"):
            raise ValueError(f"selector key {key!r} must map to a list of values, got {values!r}")
    return all(getattr(request, SELECTOR_KEYS[k][0]) is not None
               and getattr(request, SELECTOR_KEYS[k][0]) in v for k, v in selector.items())
