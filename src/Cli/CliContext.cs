using Spectre.Console;

namespace Conveyor.Cli;

/// <summary>What every command needs: where to write, how to reach the Api, and the environment.</summary>
public sealed class CliContext(
    IAnsiConsole output,
    IAnsiConsole errors,
    TextWriter rawOutput,
    HttpMessageHandler? handler,
    Func<string, string?> environment)
{
    public const string ApiUrlVariable = "CONVEYOR_API_URL";
    public const string ApiKeyVariable = "CONVEYOR_API_KEY";
    public const string DefaultApiUrl = "http://127.0.0.1:8080";

    /// <summary>Tables and messages.</summary>
    public IAnsiConsole Out { get; } = output;

    /// <summary>Progress and errors.</summary>
    public IAnsiConsole Err { get; } = errors;

    /// <summary>Plain stdout, for <c>--json</c>.</summary>
    public TextWriter RawOut { get; } = rawOutput;

    /// <summary>
    /// Whether stdout can no longer be written (a pipe whose reader has gone: <c>conveyor jobs --follow | head -1</c>), asked
    /// without writing by a command that may print nothing for long (<c>jobs --follow</c>). Never, for a writer of a test.
    /// </summary>
    public Func<bool> OutputClosed { get; init; } = () => false;

    /// <summary>How often a waiting command asks for an operation's progress.</summary>
    public TimeSpan PollInterval { get; init; } = TimeSpan.FromMilliseconds(500);

    /// <summary>
    /// How long a waiting command keeps trying to read an operation's progress while the Api cannot be reached
    /// (or answers 429/502/503/504) before it gives up with <see cref="ExitCodes.ProgressUnknown"/>; <c>--timeout</c> may end it sooner.
    /// Also how long any other read refused with 429, 502, 503 or 504 is tried again before it ends with <see cref="ExitCodes.Unreachable"/>,
    /// but those of <c>jobs --follow</c>, tried until they pass or for its <c>--retry-for</c>.
    /// </summary>
    public TimeSpan PollFailureBudget { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>The <c>--api</c> the command line gave, once <see cref="Client"/> has taken it; null when none was given.</summary>
    private string? _apiOption;

    /// <summary>
    /// A command for the user to run next, as the CLI prints it (to follow an operation, to see a job, to go on with a page):
    /// <c>conveyor</c>, then <paramref name="words"/> (the caller quotes each value for a shell, <see cref="ShellWords"/>), then
    /// the <c>--api</c> this command line was given, if any, so that the command, pasted, reaches the same Api: without it,
    /// one run with <c>--api http://other:8080</c> would send the next to <see cref="ApiUrlVariable"/> or the default, another
    /// Api, where the operation or job it names is unknown or, worse, another one. A URL from <see cref="ApiUrlVariable"/> is
    /// not repeated: the shell that ran this command has it for the next. The API key is never printed: it comes from
    /// <see cref="ApiKeyVariable"/> (and the URL holds no password: <see cref="Client"/> refuses one).
    /// </summary>
    public string Command(string words) =>
        _apiOption is null ? $"conveyor {words}" : $"conveyor {words} {ShellWords.Option("--api", _apiOption)}";

    public ConveyorClient Client(string? apiOption)
    {
        var url = apiOption ?? environment(ApiUrlVariable) ?? DefaultApiUrl;
        if (!Uri.TryCreate(url, UriKind.Absolute, out var baseAddress) || (baseAddress.Scheme != Uri.UriSchemeHttp && baseAddress.Scheme != Uri.UriSchemeHttps))
        {
            throw new CliFailureException(ExitCodes.Usage, $"'{url}' is not an http(s) URL (--api or {ApiUrlVariable}).");
        }

        // HttpClient would not send them, and every message naming the Api would print the password.
        if (baseAddress.UserInfo.Length > 0)
        {
            throw new CliFailureException(ExitCodes.Usage,
                $"The Api URL (--api or {ApiUrlVariable}) holds a user or password, which the CLI does not send; give it without them. The API key goes in {ApiKeyVariable}.");
        }

        // The paths are resolved against the address's last segment: with a query or fragment after it (a dashboard link copied
        // whole), https://host/conveyor?x=1 would send every request to https://host/api/..., past the path prefix.
        if (baseAddress.Query.Length > 0 || baseAddress.Fragment.Length > 0)
        {
            throw new CliFailureException(ExitCodes.Usage,
                $"'{url}' holds a query or fragment (--api or {ApiUrlVariable}), which the CLI's requests cannot keep; give the Api's address without it, such as https://host/conveyor.");
        }

        _apiOption = apiOption;
        var key = environment(ApiKeyVariable);
        if (string.IsNullOrWhiteSpace(key))
        {
            throw new CliFailureException(ExitCodes.Auth, $"Set {ApiKeyVariable} to an API key with the scope the command needs: admin for the error-queue commands, jobs:read for job and jobs, jobs:publish for submit.");
        }

        // Such a key cannot go into a header: without this, the request fails as if the Api could not be
        // reached or had given a strange answer. The key itself is not shown.
        if (key.Any(c => char.IsControl(c) || !char.IsAscii(c)))
        {
            throw new CliFailureException(ExitCodes.Auth,
                $"{ApiKeyVariable} is malformed: it holds control characters (such as the line break at the end of a file it was read from) "
                + "or non-ASCII characters, which no API key has.");
        }

        // Paths are relative ("api/..."), so an Api behind a path prefix works too.
        var root = baseAddress.AbsoluteUri.EndsWith('/') ? baseAddress : new Uri(baseAddress.AbsoluteUri + "/");
        return new ConveyorClient(root, key, handler)
        {
            ReadRetryBudget = PollFailureBudget,
            ReadRetryPause = PollInterval,
            Retrying = line => Err.WriteLine(Printable.Text(line)),
        };
    }
}
