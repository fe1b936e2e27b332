"""The tiny world's content: scenarios, people, topics with their sentences, prompt templates and
reply pieces. Pure data, no logic: ``rlvf.tinyworld.world`` draws requests and replies from these
tables (its docstring says what prompts and replies look like).
"""
from __future__ import annotations

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

# --------------------------------------------------------------------------------------------------
# People. A recipient is a first name, except teams, whose recipient is the team's name ("design team").

# The messaging scenarios and the channel each goes through: the one table of both.
CHANNEL_OF = {"text_message": "text", "email": "email", "slack_dm": "slack"}
MESSAGING = tuple(CHANNEL_OF)
SCENARIO_OF = {channel: scenario for scenario, channel in CHANNEL_OF.items()}

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
TITLE = {"mom": "Mom", "dad": "Dad", "grandma": "Grandma", "grandpa": "Grandpa"}
# Words the prompt uses for a relation ("my coworker Priya" is a colleague).
RELATION_WORDS = {"colleague": ("colleague", "coworker"), "boss": ("boss", "manager")}
WORK_RELATIONS = frozenset({"boss", "colleague", "client", "team"})
TEAM_ADDRESS = ("team", "everyone")
GREETING_WORDS = frozenset({"hi", "hey", "hello", "dear", "morning", "good", "evening", "afternoon"})

# --------------------------------------------------------------------------------------------------
# Topics. Each entry is topic: (keyword regex, sentences). A reply is "about" the topic when it
# matches the keyword regex (case-insensitive, at a word start); every reply contains at least one
# sentence that does.

PERSONAL_TOPICS = {
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

WORK_TOPICS = {
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
PYTHON_TOPICS = {
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

CHILD_TOPICS = {
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

RECIPE_TOPICS = {
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

TRAVEL_TOPICS = {
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

POEM_TOPICS = {
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

HISTORY_TOPICS = {
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

PRODUCT_TOPICS = {
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

MESSAGE_TOPICS = {**PERSONAL_TOPICS, **WORK_TOPICS}
DOMAIN_TOPICS = {
    "python_code": PYTHON_TOPICS,
    "explain_child": CHILD_TOPICS,
    "recipe": RECIPE_TOPICS,
    "travel_tip": TRAVEL_TOPICS,
    "poem": POEM_TOPICS,
    "history_fact": HISTORY_TOPICS,
    "product_description": PRODUCT_TOPICS,
}
TOPIC_TABLE = {**{s: MESSAGE_TOPICS for s in MESSAGING}, **DOMAIN_TOPICS}

TOPICS: dict[str, tuple[str, ...]] = {s: tuple(TOPIC_TABLE[s]) for s in SCENARIOS}

# --------------------------------------------------------------------------------------------------
# Prompt templates. Slots: {who} (a way of naming the recipient), {topic}, and a few extras ({age},
# {kid}, {n}, {days}) that vary the wording but are not part of the Request. Every template is
# compiled into a regex for parse_request, so templates of different scenarios must not overlap.

TEMPLATES = {
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
EXTRA_SLOTS = {
    "age": tuple(str(a) for a in range(4, 11)),
    "kid": ("son", "daughter", "niece", "nephew"),
    "n": tuple(str(n) for n in range(2, 7)),
    "days": tuple(str(d) for d in range(2, 8)),
}
# Openers and closers around any prompt; "" is listed several times to make it the common case.
PREFIXES = ("", "", "", "", "Hi. ", "Hello! ", "Hey. ", "Quick one. ")
SUFFIXES = ("", "", "", " Thanks.", " Thank you!", " Thanks in advance.")

# --------------------------------------------------------------------------------------------------
# Reply pieces.

TEXT_GREETINGS = ("Hi {a}, ", "Hey {a}, ", "{a}, ", "Hi {a}! ", "Hey {a}! ", "Hey {a}. ")
SLACK_GREETINGS = ("Hi {a}, ", "Hey {a}, ", "{a}, quick one: ", "Hey {a}! ", "Morning {a}, ")
EMAIL_GREETINGS = ("Hi {a},", "Hello {a},", "Dear {a},")
TEAM_EMAIL_GREETINGS = ("Hi team,", "Hello everyone,", "Hi everyone,", "Dear team,")
SUBJECTS = ("{title}", "Update on {topic}", "Question about {topic}", "Quick note on {topic}")
MESSAGE_FRAMES = ("I wanted to check in about {topic}.", "Quick note about {topic}.",
                  "Just following up on {topic}.", "I've been meaning to message you about {topic}.")
MESSAGE_CLOSERS = ("Let me know what you think.", "Let me know if that works for you.",
                   "What do you think?", "No rush on this.")
EMAIL_OPENERS = ("I hope you are doing well.", "I hope your week is going well.")
EMAIL_CLOSERS = ("Please let me know if you have any questions.", "I'm happy to discuss this further.",
                 "Let me know what you think.")
EMAIL_CLOSINGS = ("Best regards",)  # the only closing line the world writes, in ~1 email in 12
CHILD_CLOSERS = ("Pretty amazing, right?", "Isn't that cool?", "Nature is full of surprises like that.")
PRODUCT_CLOSERS = ("It also makes a thoughtful gift.", "It comes with a two-year warranty.")

# Emoji a text may end with, by the recipient's relation (rlvf.tinyworld.world's docstring says why).
TEXT_EMOJI = {
    "girlfriend": ("😊",),
    "mom": ("❤️", "😊"), "dad": ("❤️", "😊"), "grandma": ("❤️", "😊"), "grandpa": ("❤️", "😊"),
    "sister": ("❤️", "😂", "😊"), "cousin": ("😂", "😊", "🎉"), "brother": ("😊", "👍"),
    "friend": ("😂", "😊", "🎉", "👍"), "roommate": ("😂", "👍"), "neighbor": ("😊", "👍"),
}
WORK_EMOJI = ("👍", "🙂")
